/* Internal to src/model and src/cuda/model.cu: the model's layout, activations and state
 * (carl/model.h), and the device half of a model moved to a GPU (carl_model_to_device). */
#ifndef CARL_MODEL_INTERNAL_H
#define CARL_MODEL_INTERNAL_H

#include "carl/model.h"
#include "model/moe.h"

typedef struct {
  int attn_norm, wqkv, wo, moe_norm, router, w13, w2, sw13, sw2; /* tensor indices, -1 absent */
} carl__layer_idx_t;

typedef struct {
  float *h_in;  /* [T, d] residual stream entering the block */
  float *n1;    /* [T, d] */
  float *rstd1; /* [T] */
  float *qkv;   /* [T, 3d] */
  float *att;   /* [B, H, S, S] */
  float *ao;    /* [T, d] attention output before wo */
  float *h_mid; /* [T, d] after the attention residual */
  float *n2;    /* [T, d] */
  float *rstd2; /* [T] */
  carl__moe_act_t moe;
  carl_route_in_t in;
} carl__layer_act_t;

struct carl_model {
  carl_model_config_t cfg;
  int ntensors;
  carl_tensor_info_t *tensors;
  int tok_emb, pos_emb, final_norm;
  carl__layer_idx_t *li;
  int64_t nparams;
  float *params, *grads, *adam_m, *adam_v;
  int64_t adam_t;
  carl_router_t **routers;
  int P;                    /* physical expert slots of every layer (D x slots per device) */
  int64_t slot0;            /* the expert slots stored here: [slot0, slot0 + nlocal) of P; */
  int nlocal;               /* all P, or rank r's own S = P / ranks (carl__shard_storage) */
  carl_tensor_info_t *tensors_full; /* the one-process layout once the storage is sharded, else NULL */
  int64_t nparams_full;
  int64_t *init_key;        /* [ntensors] Philox counter of each tensor's first initial value */
  float *init_scale;        /* [ntensors] its standard deviation */
  int fresh;                /* 1 while the parameters are the initial ones (nothing wrote them) */
  carl_topo_t topo1;        /* one device: the topology when none is set */
  const carl_topo_t *topo;  /* &topo1 or the caller's (borrowed) */
  int user_topo;            /* 1: the caller's topology (dispatch is priced) */
  carl_exec_t *exec;        /* local: this process runs every device */
  carl_exec_t *exec_user;   /* borrowed (carl_model_set_executor), used instead of exec; NULL: none */
  carl_step_t *dstep;       /* the decision path of every layer: route -> plan -> exec -> stats -> place */
  int64_t refresh_every;
  carl_plan_mode mode;      /* flat or hierarchical dispatch */
  carl_place_opts_t place_opts;
  double stats_decay;
  int has_replicas;         /* some layer has an expert on several slots */
  int32_t *first_slot;      /* [L, P] first slot of the same expert, -1 empty (carl__note_replicas) */
  int64_t step;
  /* activations of the last forward */
  int B, S;
  int64_t cap_T, cap_att;
  int have_targets, can_backward;
  int32_t *tokens, *targets; /* [T] copies */
  carl__layer_act_t *la;
  float *h_final; /* [T, d] */
  float *nf;      /* [T, d] */
  float *rstdf;   /* [T] */
  float *logits;  /* [T, V] */
  float *dlogits; /* [T, V] */
  float *lse;     /* [T] */
  float *dh, *dtmp, *dtmp2; /* [T, d] backward scratch */
  float *dqkv;    /* [T, 3d] */
  float *datt;    /* [B, H, S, S] attention backward scratch */
  int64_t ntargets;
  struct carl__mdev *dev; /* the device half (carl_model_to_device); NULL: the model runs on the CPU */
};


/* The MoE layer descriptor of layer l (widths, router, step) for carl__moe_forward and the GPU model. */
void carl__moe_of(const carl_model_t *m, int l, carl__moe_t *L);

/* ---- the device half (src/cuda/model.cu; src/cuda/stub.c without CUDA) ------------------------ */
/* Everything runs on the GPU except the decisions: each MoE layer's router logits come to the host
 * and go through carl_step_route as on the CPU; gates, row lists and d(logits) go back up. */
typedef struct carl__mdev carl__mdev_t;
/* Device bytes the model needs for batches of B x S tokens (parameters, gradients, moments,
 * activations for the worst-case routing: every token on k rows). */
carl_status carl__mdev_bytes(const carl_model_t *m, int B, int S, size_t *bytes);
/* Allocate, check the size against the free device memory, upload parameters and moments. */
carl_status carl__mdev_create(carl_model_t *m, carl_cuda_t *g, int B, int S, carl__mdev_t **out);
void carl__mdev_free(carl__mdev_t *d);
carl_exec_t *carl__mdev_exec(carl__mdev_t *d);
/* Device arrays [nparams]: 0 params, 1 grads, 2 first moments, 3 second moments. */
float *carl__mdev_array(carl__mdev_t *d, int which);
carl_status carl__mdev_forward(carl_model_t *m, const int32_t *tokens, const int32_t *targets, int B, int S,
                               carl_model_loss_t *loss);
carl_status carl__mdev_backward(carl_model_t *m);
carl_status carl__mdev_zero_grad(carl_model_t *m);
/* Sum of squared gradients (experts counted once), scaled to max_norm as carl_model_clip_grad. */
carl_status carl__mdev_clip(carl_model_t *m, float max_norm, double *norm);
carl_status carl__mdev_adamw(carl_model_t *m, const carl_adamw_cfg_t *opt, float lr);
/* Parameters, moments (and gradients) to the host arrays. */
carl_status carl__mdev_download(carl_model_t *m);
const float *carl__mdev_logits(const carl__mdev_t *d); /* host copy [B, S, V] of a forward without targets */

#endif
