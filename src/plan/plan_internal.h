/* Internals of the dispatch plan shared by the fast path, the reference and the tests. */
#ifndef CARL_PLAN_INTERNAL_H
#define CARL_PLAN_INTERNAL_H

#include "carl/plan.h"

/* Checks of a decision shared by the plan builder and the reference: shapes, placement vs
 * topology, k, mode. */
carl_status carl__plan_check_build(const carl_topo_t *t, const carl_placement_t *p, const int32_t *experts, int64_t T,
                                   int k, carl_plan_mode mode);
/* The same plus token_bytes and the accumulator (the reference's whole contract). */
carl_status carl__plan_check_args(const carl_topo_t *t, const carl_placement_t *p, const int32_t *experts, int64_t T,
                                  int k, size_t token_bytes, carl_plan_mode mode, const carl_cost_t *c);

/* Hop counts hop [D, D] (overwritten) and copies of a decision: the fast kernels (plan.c). */
carl_status carl__plan_count(const carl_topo_t *t, const carl_placement_t *p, const int32_t *experts,
                             const int32_t *src, int64_t T, int k, carl_plan_mode mode, int64_t *hop,
                             int64_t *copies);

/* The plain reference of the whole accounting (obvious loops, one thread): the cost of
 * carl_plan_build + carl_plan_cost of the same decision. */
carl_status carl__plan_cost_ref(const carl_topo_t *t, const carl_placement_t *p, const int32_t *experts,
                                const int32_t *src, int64_t T, int k, size_t token_bytes, carl_plan_mode mode,
                                carl_cost_t *c);

/* Test hook: 0 keeps carl_plan_cost off its AVX-512 kernel (the portable one runs instead);
 * -1 (default) uses AVX-512 where the CPU has it. */
extern int carl__plan_simd;

#endif
