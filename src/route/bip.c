/* bip router: placeholder until its implementation lands (returns CARL_ERR_UNSUPPORTED). */
#include "carl/route_util.h"

static carl_status stub_route(carl_router_t *r, const carl_route_in_t *in, carl_route_out_t *out) {
  (void)in;
  (void)out;
  return carl_fail(CARL_ERR_UNSUPPORTED, "router '%s': not implemented yet", r->impl->name);
}

const carl_router_impl_t carl__router_bip = {.name = "bip", .help = "(not implemented yet)", .route = stub_route};
