/* Internals of the dispatch plan shared by the fast path, the reference and the tests. */
#ifndef CARL_PLAN_INTERNAL_H
#define CARL_PLAN_INTERNAL_H

#include "carl/plan.h"

/* Checks shared by both implementations: shapes, placement vs topology, k, token_bytes. */
carl_status carl__plan_check_args(const carl_topo_t *t, const carl_placement_t *p, const int32_t *experts, int64_t T,
                                  int k, size_t token_bytes, carl_plan_mode mode, const carl_cost_t *c);

/* The plain reference implementation (obvious loops, one thread): same contract as carl_plan_cost. */
carl_status carl__plan_cost_ref(const carl_topo_t *t, const carl_placement_t *p, const int32_t *experts,
                                const int32_t *src, int64_t T, int k, size_t token_bytes, carl_plan_mode mode,
                                carl_cost_t *c);

/* Test hook: 0 keeps carl_plan_cost off its AVX-512 kernel (the portable one runs instead);
 * -1 (default) uses AVX-512 where the CPU has it. */
extern int carl__plan_simd;

#endif
