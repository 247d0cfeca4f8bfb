/* carl/place.h: routing statistics for placement, placement algorithms (contiguous, roundrobin,
 * DeepSeek EPLB exactly and without duplicates on a GPU, traffic-aware, co-activation/METIS,
 * SmartMoE's greedy re-placement) and
 * migration plans (ALGORITHMS.md section 4).
 *
 * Usage:
 *   carl_place_stats_t st;
 *   CARL_TRY(carl_place_stats_init(&st, L, E, topo.nodes, 0.9));      // EMA decay 0.9
 *   for each step, each layer l:
 *     CARL_TRY(carl_place_stats_add(&st, l, experts, src_node, T, k));  // experts [T, k], src_node [T]
 *   CARL_TRY(carl_place_stats_save(&st, "stats/"));                    // load.npy traffic.npy coact.npy batches.npy
 *
 *   carl_place_input_t in;
 *   CARL_TRY(carl_place_stats_layer(&st, 0, &in));                     // views into st, no copy
 *   carl_place_opts_t o;
 *   carl_place_opts_default(&o);
 *   o.algo = CARL_PLACE_TRAFFIC;
 *   carl_placement_t pl;
 *   CARL_TRY(carl_place_compute(&topo, &in, &o, &pl));
 *   carl_place_eval_t ev;
 *   CARL_TRY(carl_place_evaluate(&topo, &in, &pl, 8192, &ev));         // loads, expected bytes per link class
 *   carl_migration_t mig;
 *   CARL_TRY(carl_place_migrate(&topo, &old, &pl, 1, expert_bytes, &mig)); // may relabel pl inside nodes
 *   carl_migration_free(&mig); carl_placement_free(&pl); carl_place_stats_free(&st);
 *
 * Statistics (per layer l, per batch b of (token, expert) choices):
 *   load[l, e]       EMA of the number of (token, expert) pairs with expert e;
 *   traffic[l, n, e] EMA of the number of pairs whose token lives on node n;
 *   coact[l, i, j]   EMA of the number of tokens that chose both i and j (i != j; symmetric, diagonal 0).
 *   Each is x <- decay * x + (1 - decay) * batch, except the first batch of a layer, which sets x =
 *   batch (no start-up bias). Merging ranks that saw parts of the same batches is an element-wise
 *   sum (the update is linear), done by carl_place_stats_merge; across MPI ranks the same merge is an
 *   MPI_Allreduce(MPI_SUM) of load, traffic and coact (each one contiguous float64 array).
 *
 * Ownership: carl_place_stats_t owns its arrays (init/free); carl_place_input_t only points at
 * arrays owned by someone else; carl_place_compute fills a fresh carl_placement_t the caller frees
 * with carl_placement_free; carl_migration_t owns its move list (carl_migration_free).
 */
#ifndef CARL_PLACE_H
#define CARL_PLACE_H

#include "carl/topo.h"

/* Largest value of a statistics file's element (load, traffic, co-activation counts): sums and
 * byte counts over the largest allowed shapes stay finite. */
#define CARL_PLACE_COUNT_MAX 1e15

#ifdef __cplusplus
extern "C" {
#endif

/* ---- statistics -------------------------------------------------------------------------------- */
typedef struct {
  int L;            /* layers */
  int E;            /* experts per layer */
  int N;            /* nodes (rows of traffic) */
  double decay;     /* EMA decay in [0, 1) */
  int64_t *batches; /* [L] batches seen per layer */
  double *load;     /* [L, E] */
  double *traffic;  /* [L, N, E] */
  double *coact;    /* [L, E, E] */
} carl_place_stats_t;

carl_status carl_place_stats_init(carl_place_stats_t *s, int L, int E, int N, double decay);
void carl_place_stats_free(carl_place_stats_t *s);
/* One batch of one layer. experts: [T, k] ids in [0, E) or -1 (dropped, ignored); a token that
 * lists an expert twice counts it once. src_node: [T] node of each token in [0, N), or NULL
 * (token t on node t * N / T). */
carl_status carl_place_stats_add(carl_place_stats_t *s, int layer, const int32_t *experts, const int32_t *src_node,
                                 int64_t T, int k);
/* dst += src, element-wise (ranks that saw parts of the same batches). Shapes and batch counts must
 * match; a dst layer with no batches takes src's. */
carl_status carl_place_stats_merge(carl_place_stats_t *dst, const carl_place_stats_t *src);
/* DIR/load.npy float64 [L, E], DIR/traffic.npy float64 [L, N, E], DIR/coact.npy float64 [L, E, E],
 * DIR/batches.npy int64 [L]. save creates DIR when missing. load requires load.npy (float32,
 * float64, int32 or int64, [L, E] or [E]); traffic.npy and coact.npy may be absent (then filled with
 * zeros and flagged in has_traffic / has_coact); batches.npy may be absent (taken as 1). */
carl_status carl_place_stats_save(const carl_place_stats_t *s, const char *dir);
carl_status carl_place_stats_load(const char *dir, double decay, carl_place_stats_t *s, int *has_traffic,
                                  int *has_coact);

/* ---- algorithms -------------------------------------------------------------------------------- */
typedef enum {
  CARL_PLACE_CONTIGUOUS = 0, /* expert e on device e*D/E, once */
  CARL_PLACE_ROUNDROBIN = 1, /* expert e on device e mod D, once */
  CARL_PLACE_EPLB = 2,       /* DeepSeek EPLB exactly (eplb.py): hierarchical or global policy, replicas;
                                where it puts an expert twice on a GPU, the second copy's slot is empty */
  CARL_PLACE_TRAFFIC = 3,    /* minimise expected inter-node copies under a load bound, replicas */
  CARL_PLACE_COACTIVATION = 4, /* METIS k-way partition of the co-activation graph, replicas */
  CARL_PLACE_EPLB_NODUP = 5, /* "eplb-nodup": EPLB that never puts an expert twice on a GPU; the same as
                                eplb wherever eplb has no such duplicate */
  CARL_PLACE_SMARTMOE = 6    /* SmartMoE's greedy re-placement from the current placement (prev), no
                                replicas; kept unchanged unless the largest device load drops */
} carl_place_algo;
#define CARL_PLACE_NALGO 7

const char *carl_place_algo_name(carl_place_algo a); /* "contiguous", ... */
carl_status carl_place_algo_parse(const char *name, carl_place_algo *out);

/* One layer's statistics (views). */
typedef struct {
  int E;                 /* experts */
  int N;                 /* nodes: rows of traffic */
  const double *load;    /* [E] load per expert (>= 0) */
  const double *traffic; /* [N, E] pairs from source node n to expert e; NULL when unknown */
  const double *coact;   /* [E, E] co-activation counts; NULL when unknown */
  const carl_placement_t *prev; /* the current placement (smartmoe); NULL: contiguous */
} carl_place_input_t;

carl_status carl_place_stats_layer(const carl_place_stats_t *s, int layer, carl_place_input_t *in);

typedef struct {
  carl_place_algo algo;
  int replicas;      /* physical experts R (slots in all); 0: from slots, or ceil(E/D)*D */
  int slots;         /* slots per device; 0: R / D. When both are set R must be D * slots */
  int groups;        /* eplb: expert groups; 0: one per node when E % nodes == 0, else the global policy */
  int eplb_global;   /* eplb: 1 forces the global policy */
  double load_bound; /* traffic, coactivation: device load max/mean they aim to stay under (default 1.25) */
  int refine_passes; /* traffic, coactivation: local-search passes (default 8) */
  uint64_t seed;     /* METIS_OPTION_SEED (default 1) */
} carl_place_opts_t;

void carl_place_opts_default(carl_place_opts_t *o);

/* Compute a placement of in->E experts over t->devices devices. Errors name the input:
 * statistics of the wrong shape or with negative/non-finite values, more experts than slots,
 * replicas fewer than experts or not a multiple of D, zero devices, missing traffic/co-activation
 * for the algorithms that need them, METIS absent (CARL_ERR_UNSUPPORTED). */
carl_status carl_place_compute(const carl_topo_t *t, const carl_place_input_t *in, const carl_place_opts_t *o,
                               carl_placement_t *out);

/* ---- DeepSeek EPLB, exact semantics of deepseek-ai/EPLB eplb.py (one layer) --------------------- */
/* As the reference, in float32: weights are rounded to float, and sums, loads and quotients are
 * float arithmetic. Equal weights keep index order (a stable sort; torch's default CPU sort may
 * order them otherwise, docs/placement.md). */
/* Items sorted by weight descending (ties: lower index first); each goes to the lightest pack (ties:
 * lower pack) that still holds fewer than n/packs items. pack, rank: [n]. n % packs == 0. */
carl_status carl_eplb_balanced_packing(const double *w, int n, int packs, int32_t *pack, int32_t *rank);
/* Replicate n logical experts to nphy physical ones: each extra replica goes to argmax w/cnt (ties:
 * lower index). phy2log, rank: [nphy]; cnt: [n]. */
carl_status carl_eplb_replicate(const double *w, int n, int nphy, int32_t *phy2log, int32_t *rank, int32_t *cnt);
/* rebalance_experts for one layer: hierarchical policy when groups % nodes == 0, else global.
 * w: [E]; phy2log: [R] (GPU g holds phy2log[g*R/gpus .. (g+1)*R/gpus)); logcnt: [E]. An expert may
 * appear twice on one GPU, as in the reference. */
carl_status carl_eplb_rebalance(const double *w, int E, int R, int groups, int nodes, int gpus, int32_t *phy2log,
                                int32_t *logcnt);
/* The same with no expert twice on a GPU: at most one replica per GPU of the node (the hierarchical
 * policy) or of the cluster (the global one) in the replica counts, and the packing skips a GPU that
 * holds the expert (a swap makes room when every GPU with room holds it); where a rule changed a
 * choice, load-lowering swaps between the GPUs of the node follow. The hierarchical policy needs
 * R <= E * gpus / nodes (a node holds only its own experts); above that, the global policy. Equal to
 * carl_eplb_rebalance wherever that one has no duplicate; succeeds whenever R <= E * gpus. */
carl_status carl_eplb_rebalance_nodup(const double *w, int E, int R, int groups, int nodes, int gpus, int32_t *phy2log,
                                      int32_t *logcnt);

/* ---- evaluation -------------------------------------------------------------------------------- */
typedef struct {
  double dev_max, dev_mean;   /* device load: sum over its slots of load[e] / replicas(e) */
  double node_max, node_mean; /* node load */
  double bytes[CARL_NLINK];   /* expected dispatch + combine bytes per link class under traffic */
  double inter_copies;        /* expected (token, expert) copies that leave their node */
  double traffic_cost;        /* sum_{n,e} traffic[n,e] * c(n, nearest replica node), ALGORITHMS.md 4 */
  double coact_local;         /* fraction of co-activation weight whose two experts share a device */
} carl_place_eval_t;

/* Loads from in->load; bytes and copies from in->traffic (zeros when NULL): a token of node n sits
 * on each device of n with probability 1/P; it is served by a replica in its node when there is
 * one (self when on its own device), else by the nearest replica (rack before inter).
 * token_bytes: bytes of one hidden vector. */
carl_status carl_place_evaluate(const carl_topo_t *t, const carl_place_input_t *in, const carl_placement_t *p,
                                double token_bytes, carl_place_eval_t *ev);

/* ---- migration --------------------------------------------------------------------------------- */
typedef struct {
  int32_t expert, src, dst, slot; /* copy expert from device src into slot `slot` of device dst */
  int32_t link;                   /* carl_link_class of src -> dst */
} carl_move_t;

typedef struct {
  int64_t n_moves;
  carl_move_t *moves;       /* [n_moves] */
  int64_t kept;             /* slots whose expert was already on that device */
  double bytes[CARL_NLINK]; /* moved bytes per link class */
  double total_bytes;
  double time_s;            /* max over devices of max(sent, received) of sum over classes bytes/B */
} carl_migration_t;

/* Plan the move from placement old to placement *nw (same E and D). With relabel != 0, the devices of
 * each node in *nw are first permuted (an optimal assignment per node) to keep the most experts where
 * they are: device loads, node contents and expected traffic are unchanged by this. Then, on each
 * device, experts that stay keep their old slot; every other slot is a move from the nearest old
 * holder. expert_bytes: weights plus optimizer state of one expert. *nw is rewritten in place. */
carl_status carl_place_migrate(const carl_topo_t *t, const carl_placement_t *old, carl_placement_t *nw, int relabel,
                               double expert_bytes, carl_migration_t *m);
void carl_migration_free(carl_migration_t *m);

#ifdef __cplusplus
}
#endif
#endif
