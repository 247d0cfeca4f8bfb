/* topk (GShard / Mixtral) and switch (Switch Transformer, top-1): ALGORITHMS.md 2.1.
 * s = softmax(z) (or sigmoid); S_t = TopK(s) with the lower index winning ties; g = s at S_t,
 * renormalised over the kept experts (option renorm). Capacity C = ceil(cf*T*k/E), overflow
 * dropped lowest score first. Default aux loss 1e-2 (Switch). */
#include "route/router_impl.h"

static carl_status topk_route(carl_router_t *r, const carl_route_in_t *in, carl_route_out_t *out) {
  return carl_route_topk_biased(r, in, out, NULL, 0, NULL);
}

static carl_status topk_describe(carl_router_t *r, const carl_route_in_t *in, carl_select_t *sel) {
  (void)r, (void)in;
  memset(sel, 0, sizeof *sel);
  return CARL_OK;
}

static const carl_opt_t topk_opts[] = {
    {"aux", 1e-2, "Switch/GShard auxiliary loss coefficient (Switch Transformer: 1e-2)"},
};

const carl_router_impl_t carl__router_topk = {
    .name = "topk",
    .help = "softmax top-k with renormalised gates (GShard, Mixtral); aux loss 1e-2",
    .opts = topk_opts,
    .nopts = 1,
    .route = topk_route,
    .describe = topk_describe,
};

static const carl_opt_t switch_opts[] = {
    {"k", 1, "experts per token (Switch: 1)"},
    {"renorm", 0, "0: the gate is the softmax probability of the chosen expert (Switch)"},
    {"aux", 1e-2, "Switch auxiliary loss coefficient (1e-2)"},
};

const carl_router_impl_t carl__router_switch = {
    .name = "switch",
    .help = "Switch Transformer top-1: gate = softmax probability; aux loss 1e-2",
    .opts = switch_opts,
    .nopts = 3,
    .route = topk_route,
    .describe = topk_describe,
};
