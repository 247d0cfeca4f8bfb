/* carl/model.h: a GPT-style decoder with Mixture-of-Experts feed-forward layers, fp32 on the CPU.
 *
 * Usage:
 *   carl_model_config_t cfg;
 *   carl_model_config_default(&cfg);                 // then set vocab, d_model, n_experts, router, ...
 *   carl_model_t *m;
 *   CARL_TRY(carl_model_create(&cfg, &m));           // parameters initialised from cfg.seed (Philox)
 *   carl_adamw_cfg_t opt = carl_adamw_default();
 *   for (int64_t step = 0; step < steps; step++) {
 *     carl_model_set_step(m, step);
 *     carl_model_loss_t L;
 *     CARL_TRY(carl_model_forward(m, tokens, targets, B, S, &L));   // tokens, targets: [B, S]
 *     carl_model_zero_grad(m);
 *     CARL_TRY(carl_model_backward(m));              // grads of L.total (CE + router losses)
 *     CARL_TRY(carl_model_router_update(m));         // stateful routers (bias, duals) move on
 *     float norm = carl_model_clip_grad(m, 1.0f);
 *     CARL_TRY(carl_model_adamw_step(m, &opt, carl_lr_cosine(step, warmup, steps, 3e-4f, 3e-5f)));
 *   }
 *   for (int i = 0; i < carl_model_ntensors(m); i++) {     // save by name (safetensors)
 *     const carl_tensor_info_t *ti = carl_model_tensor(m, i);
 *     write(ti->name, ti->shape, ti->ndim, carl_model_params(m) + ti->offset);
 *   }
 *   carl_model_free(m);
 *
 * Architecture (docs/model.md): token + learned position embeddings; n_layers blocks of
 *   h = h + Attn(RMSNorm(h));  h = h + MoE(RMSNorm(h));
 * final RMSNorm; output head tied to the token embedding. Attention is causal multi-head without
 * biases. The MoE layer routes through the router registry (carl/route.h): router logits
 * z = x W_r^T, carl_router_route picks k experts and gate weights per token; every expert is a
 * SwiGLU FFN; an optional shared expert (width d_shared) sees every token. The loss is the mean
 * next-token cross-entropy over targets >= 0 plus the router losses of every layer (coefficients
 * as configured in the router options); both enter the gradient.
 *
 * Parameters live in one contiguous float buffer; carl_model_tensor() lists (name, shape, offset).
 * Linear weights are stored [out, in] (PyTorch nn.Linear layout): y = x W^T.
 *   tok_emb                  [V, d]       (also the output head)
 *   pos_emb                  [S_max, d]
 *   layers.<l>.attn_norm     [d]
 *   layers.<l>.attn.wqkv     [3d, d]      rows: q (d), k (d), v (d); head h uses columns h*hd..
 *   layers.<l>.attn.wo       [d, d]
 *   layers.<l>.moe_norm      [d]
 *   layers.<l>.moe.router    [E, d]
 *   layers.<l>.moe.w13       [P, 2f, d]   per physical slot (P = n_slots, E when 0): rows
 *                                         0..f-1 gate (silu), f..2f-1 up
 *   layers.<l>.moe.w2        [P, d, f]
 *   layers.<l>.moe.shared_w13 [2fs, d]    only when d_shared > 0
 *   layers.<l>.moe.shared_w2  [d, fs]
 *   final_norm               [d]
 *
 * Ownership: carl_model_t owns parameters, gradients, optimizer moments, activations, routers.
 * Pointers returned by accessors are valid until the next forward (activations) or until
 * carl_model_free (parameters, gradients). The topology given to carl_model_set_topology is
 * borrowed and must outlive the model's use of it; placements are copied.
 * Experts and slots: expert weights (and their AdamW moments) are stored per physical slot
 * g = device x S + local slot of the layer's placement; slot g holds expert g until a placement is
 * set. Every MoE layer runs its step through carl/step.h: route -> dispatch plan -> the local
 * executor (dispatch, experts on each slot's rows, combine) -> statistics -> every R steps a new
 * placement, with the expert tensors moved by the migration plan (carl_model_end_step). Replicas
 * of an expert get the sum of their gradients, so they stay bitwise equal; the gradient norm
 * counts each expert once.
 * Determinism: the same config, seed and inputs give bitwise the same results for any OpenMP
 * thread count (fixed-order reductions, no atomics in float sums).
 */
#ifndef CARL_MODEL_H
#define CARL_MODEL_H

#include "carl/nn.h"
#include "carl/plan.h"
#include "carl/route.h"
#include "carl/step.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Size limits of a model config (carl_model_config_check and the config parser use these). */
#define CARL_MODEL_MAX_VOCAB (1 << 24)
#define CARL_MODEL_MAX_SEQ (1 << 16)
#define CARL_MODEL_MAX_D (1 << 16)
#define CARL_MODEL_MAX_LAYERS 1024
#define CARL_MODEL_MAX_FF (1 << 20)
#define CARL_MODEL_MAX_EXPERTS 4096
#define CARL_MODEL_MAX_SLOTS 65536
#define CARL_MODEL_MAX_ROUTER_OPTS 16

typedef struct {
  int vocab;        /* V */
  int max_seq;      /* S_max: rows of pos_emb; forward takes S <= S_max */
  int d_model;      /* d */
  int n_layers;     /* L */
  int n_heads;      /* H; d % H == 0 */
  int d_ff;         /* f: hidden width of each expert */
  int n_experts;    /* E */
  int top_k;        /* k: passed to the router as option "k" unless the options set it */
  int d_shared;     /* fs: hidden width of the shared expert; 0 = none */
  int n_slots;      /* P: physical expert slots (devices x slots per device; replicas fill the
                       slots beyond E); 0: one per expert (P = E) */
  float init_std;   /* N(0, init_std) for matrices; wo and w2 are scaled by 1/sqrt(2L) */
  float norm_eps;   /* RMSNorm epsilon */
  uint64_t seed;    /* parameter init and router seed */
  char router[CARL_ROUTER_NAME_MAX]; /* router registry name ("topk", "carl", ...) */
  int n_router_opts;
  char router_keys[CARL_MODEL_MAX_ROUTER_OPTS][CARL_ROUTER_NAME_MAX];
  double router_vals[CARL_MODEL_MAX_ROUTER_OPTS];
} carl_model_config_t;

/* A small default (V 256, S 128, d 128, L 2, H 4, f 256, E 8, k 2, no shared, topk router). */
void carl_model_config_default(carl_model_config_t *c);
/* Error naming the field when a size is out of range or inconsistent. */
carl_status carl_model_config_check(const carl_model_config_t *c);
/* Add (or replace) a router option; error when the table is full. */
carl_status carl_model_config_set_router_opt(carl_model_config_t *c, const char *key, double val);

typedef struct {
  char name[48];
  int ndim;
  int64_t shape[3];
  int64_t offset; /* in floats from the start of carl_model_params() */
  int64_t numel;
  int decay;      /* 1: matrices (AdamW weight decay applies), 0: norm weights, position embedding */
} carl_tensor_info_t;

typedef struct carl_model carl_model_t;

carl_status carl_model_create(const carl_model_config_t *cfg, carl_model_t **out);
/* The model of rank `rank` of `ranks` of an expert-parallel run (docs/mpi.md): it stores only the
 * rank's own expert slots (slot g of n_slots, g in [rank S, rank S + S), S = n_slots / ranks),
 * initialised to exactly the values carl_model_create gives them (the init is keyed by expert),
 * and the non-expert tensors whole; the placement set before the executor takes every slot's
 * initial values from its new expert. It runs only under a multi-process executor of that split
 * (carl_model_set_executor); no replicated experts (n_slots must equal n_experts). */
carl_status carl_model_create_ep(const carl_model_config_t *cfg, int ranks, int rank, carl_model_t **out);
void carl_model_free(carl_model_t *m);
const carl_model_config_t *carl_model_config(const carl_model_t *m);

int carl_model_ntensors(const carl_model_t *m);
const carl_tensor_info_t *carl_model_tensor(const carl_model_t *m, int i);
/* Index of the tensor called name, or -1. */
int carl_model_find_tensor(const carl_model_t *m, const char *name);
int64_t carl_model_nparams(const carl_model_t *m);
float *carl_model_params(carl_model_t *m); /* [nparams] */
float *carl_model_grads(carl_model_t *m);  /* [nparams] */
/* AdamW first and second moments [nparams] each and the step count (for checkpoints). */
float *carl_model_adam_m(carl_model_t *m);
float *carl_model_adam_v(carl_model_t *m);
int64_t *carl_model_adam_t(carl_model_t *m);

/* Topology and placement of every layer (topo NULL: one device, no dispatch cost; place NULL:
 * contiguous). The expert tensors move from each layer's current placement to the new one. The
 * placement's devices x slots must equal the model's n_slots. Tokens of a step are split evenly
 * over the devices in order. Any placement refresh set before is kept. */
carl_status carl_model_set_topology(carl_model_t *m, const carl_topo_t *topo, const carl_placement_t *place);
/* Run the MoE layers through ex (borrowed, must outlive the model's use of it; NULL: the model's
 * own local executor) with the current placements (statistics gathered so far are dropped).
 * Several processes and no replicated experts: from here on each rank stores only its own expert
 * slots (carl_model_expert_slots), so set topology, placements and checkpoint contents before;
 * the model then keeps that executor's rank split (another split is refused).
 * With a process-crossing executor (carl_exec_size > 1, one process per device of the topology)
 * every process calls forward/backward with its own sequences: the MoE layers route every
 * process's tokens the same way on all of them, run the experts of the process's slots only, the
 * cross-entropy is the mean over every process's targets, and backward sums every gradient over
 * the processes (the same bits on each), so the parameters stay replicated (docs/mpi.md). */
carl_status carl_model_set_executor(carl_model_t *m, carl_exec_t *ex);
/* Flat (the default) or hierarchical dispatch of every MoE layer (carl/plan.h), with the current
 * placements (statistics gathered so far are dropped). */
carl_status carl_model_set_dispatch(carl_model_t *m, carl_plan_mode mode);
/* Placement of one layer (same topology); its expert tensors move to the new slots. */
carl_status carl_model_set_placement(carl_model_t *m, int layer, const carl_placement_t *place);
const carl_placement_t *carl_model_placement(const carl_model_t *m, int layer);
/* The expert tensors of layer l were written in layout `from` (e.g. loaded from a checkpoint of
 * another topology, any D x S = n_slots): move them to the layer's current placement. */
carl_status carl_model_import_layout(carl_model_t *m, int layer, const carl_placement_t *from);
/* Placement refresh: every `every` steps (0: never) each layer's placement is recomputed by
 * po->algo (NULL: traffic) from its routing statistics (EMA decay stats_decay) and the expert
 * tensors migrate (carl_model_end_step). Statistics gathered so far are dropped. */
carl_status carl_model_set_refresh(carl_model_t *m, int64_t every, const carl_place_opts_t *po, double stats_decay);
/* End of training step `step` (after the optimizer step): the refresh when one is due
 * (carl_step_end; last: the run's step count). */
carl_status carl_model_end_step(carl_model_t *m, int64_t step, int64_t last, carl_step_refresh_t *info);
/* The model's step (placements, plans, costs, statistics of every layer); _mut for restoring its
 * statistics from a checkpoint. The topology the step runs on (one device when none is set). */
const carl_step_t *carl_model_dispatch(const carl_model_t *m);
carl_step_t *carl_model_dispatch_mut(carl_model_t *m);
const carl_topo_t *carl_model_topology(const carl_model_t *m);
/* Training step passed to the routers (schedules, warm start, jitter stream). */
void carl_model_set_step(carl_model_t *m, int64_t step);
/* The router of layer l (for save/load of its state). */
carl_router_t *carl_model_router(carl_model_t *m, int layer);

typedef struct {
  double ce;     /* mean cross-entropy over targets >= 0 (0 when targets is NULL) */
  double router; /* sum over layers of the routers' loss_total */
  double total;  /* ce + router: the quantity carl_model_backward differentiates */
  int64_t ntargets;
} carl_model_loss_t;

/* tokens, targets: [B, S] ids in [0, V); targets < 0 are ignored; targets may be NULL (no loss,
 * no backward: for sampling). S <= max_seq. */
carl_status carl_model_forward(carl_model_t *m, const int32_t *tokens, const int32_t *targets, int B, int S,
                               carl_model_loss_t *loss);
/* Logits of the last forward: [B, S, V]. */
const float *carl_model_logits(const carl_model_t *m);
void carl_model_zero_grad(carl_model_t *m);
/* Adds d(loss.total)/d(params) of the last forward (with targets) into the gradients. */
carl_status carl_model_backward(carl_model_t *m);
/* Statistics of the last forward (carl_step_observe): loads all-reduced through the executor,
 * stateful routers update from them (bias, duals), placement statistics accumulate. Call once per
 * training step. */
carl_status carl_model_router_update(carl_model_t *m);

/* Global L2 norm of the gradients (fixed-order sum in double); scales them to max_norm when the
 * norm is larger (max_norm <= 0: no clipping). Returns the norm before clipping. */
float carl_model_clip_grad(carl_model_t *m, float max_norm);
/* Expert-parallel runs keep each expert slot up to date on its own rank only (docs/mpi.md). With
 * replicated experts (n_slots > n_experts) every rank stores every slot, and this all-gathers every
 * rank's slots of the parameters and AdamW moments so that every rank holds the whole model
 * (every rank must call it). Nothing to do in one process. Without replicas a rank stores only its
 * own slots (carl_model_expert_slots) and there is nothing to gather into: an error; use
 * carl_model_full. */
carl_status carl_model_gather_experts(carl_model_t *m);

/* The expert slots this process stores: [*first, *first + *count) of the model's n_slots. All of
 * them in one process and with replicated experts; under a multi-process executor without
 * replicas (carl_model_set_executor) rank r stores only its own S = n_slots / ranks, first = r S:
 * the expert tensors of carl_model_tensor() are then [S, ...] and carl_model_nparams() counts the
 * non-expert parameters and those S slots. */
void carl_model_expert_slots(const carl_model_t *m, int64_t *first, int *count);

/* The whole model in the one-process layout (tensors as in a one-process run, expert tensors
 * [n_slots, ...]), for a checkpoint. Every rank must call it (all-gathers of the expert slots);
 * rank 0 gets the data, the other ranks an empty result (ntensors 0) when the slots are stored per
 * rank. In one process and with replicas the arrays are the model's own (after
 * carl_model_gather_experts); otherwise a copy that carl_model_full_free releases. */
typedef struct {
  int ntensors;
  const carl_tensor_info_t *tensors; /* [ntensors], offsets into the arrays below */
  int64_t nparams;
  const float *params, *adam_m, *adam_v; /* [nparams] each */
  float *owned;                          /* storage of the copy (NULL: views of the model) */
} carl_model_full_t;
carl_status carl_model_full(carl_model_t *m, carl_model_full_t *out);
void carl_model_full_free(carl_model_full_t *f);
/* One AdamW step on every tensor; weight decay only on tensors with decay == 1. */
carl_status carl_model_adamw_step(carl_model_t *m, const carl_adamw_cfg_t *opt, float lr);

/* ---- the GPU (docs/gpu.md, "Training on the GPU") ------------------------------------------- */
typedef struct carl_cuda carl_cuda_t; /* carl/cuda.h */
/* Device bytes for training with batches of up to B x S tokens: parameters, gradients, both AdamW
 * moments and the activations (worst-case routing: every token on k rows). */
carl_status carl_model_device_bytes(const carl_model_t *m, int B, int S, size_t *bytes);
/* Move the model to the GPU g (borrowed, must outlive the model) for batches of up to B x S tokens
 * (fp32: parameters stay float32 master weights on the device). All memory is allocated here; when
 * carl_model_device_bytes exceeds the device's free memory (cudaMemGetInfo) the error names both
 * and nothing is allocated. Afterwards forward, backward, zero_grad, clip_grad, adamw_step and the
 * refresh migrations run on the device; every MoE layer's router logits are copied to the host and
 * routed by carl_step_route as on the CPU (one decision path), its gates, row lists and d(logits)
 * copied back; router_update, layer_stats and end_step are unchanged. The host parameter and moment
 * arrays go stale until carl_model_sync_host. One process only; set_topology, set_placement,
 * import_layout and set_executor are refused afterwards (set_dispatch and set_refresh work). */
carl_status carl_model_to_device(carl_model_t *m, carl_cuda_t *g, int B, int S);
int carl_model_on_device(const carl_model_t *m);
/* Copy parameters, gradients and AdamW moments from the device to the host arrays (before a
 * checkpoint); nothing to do on the CPU. */
carl_status carl_model_sync_host(carl_model_t *m);

/* Routing of layer l in the last forward. Pointers into the model (valid until the next forward). */
typedef struct {
  int64_t T;              /* tokens = B * S */
  int E, k;
  const float *logits;    /* [T, E] router logits */
  const int32_t *experts; /* [T, k] chosen experts, -1 dropped */
  const float *weights;   /* [T, k] gate weights */
  const int64_t *load;    /* [E] (token, slot) pairs sent to each expert */
  int64_t dropped;        /* (token, slot) pairs dropped by capacity */
  int nloss;
  carl_loss_t loss[CARL_MAX_LOSSES];
  double loss_total;
  /* simulated dispatch of this layer (zero when no topology is set): */
  double bytes[CARL_NLINK]; /* dispatch + combine bytes per link class, token = d floats */
  double inter_fraction;
  double a2a_s;
} carl_moe_stats_t;
carl_status carl_model_layer_stats(const carl_model_t *m, int layer, carl_moe_stats_t *st);

#ifdef __cplusplus
}
#endif
#endif
