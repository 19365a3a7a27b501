/* best_dot: each user's `top` highest-scoring items, the scores users[u] . items[i] + bias[i]
 * made and searched tile by tile in registers, never written to memory
 * (recrl/kernels/__init__.py builds and loads this file; README "A search fused into the product").
 *
 * The threads walk the catalogue a panel of PANEL items at a time: together they copy the
 * panel's factors dimension by dimension into one buffer (zero past the catalogue's end; the
 * items' biases, if any, as one more row), then each scores it against its share of the users,
 * MR at a time. A tile is MR users x TILE items: MR x NR accumulators of W floats, each
 * dimension of the tile's items loaded once and multiplied with the MR users' factor.
 * After the tile's last FMA each user's TILE scores are reduced by max into one vector and
 * compared with the lowest score of the user's list of `top` best so far; only where some score
 * beats it (a handful of times per user over the catalogue) are the TILE scores written to the
 * stack and scanned in item order, skipping the user's excluded items, each new entry inserted
 * in the list by score. Ties keep the earlier item first, as torch.max does.
 *
 * Built twice: for AVX-512 (vectors of 16 floats, tiles of 6 users x 64 items in 24 of the 32
 * registers, panels of 512 items) and, with -DRECRL_AVX2, for AVX2 (vectors of 8, tiles of
 * 4 users x 24 items in 12 of the 16 registers, panels of 480), the same algorithm through the
 * vector helpers below. (AVX2 tiles of 6 x 16, the usual sgemm shape, ran 5% slower: each
 * tile's check of its users' lists came more often for the same work.)
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

#ifdef RECRL_AVX2
#define W 8              /* floats per vector */
#define MR 4             /* users per tile */
#define NR 3             /* vectors per tile */
#define PANEL 480        /* items per panel (a multiple of the tile): 34 dimensions are 65 KB, in L2 */
typedef __m256 vec;
typedef __m256i lanes_t;
typedef __m256i index_t;
static inline vec vzero(void) { return _mm256_setzero_ps(); }
static inline vec vset1(float x) { return _mm256_set1_ps(x); }
static inline vec vload(const float *p) { return _mm256_load_ps(p); }
static inline void vstore(float *p, vec a) { _mm256_store_ps(p, a); }
static inline vec vfma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
static inline vec vmax(vec a, vec b) { return _mm256_max_ps(a, b); }
static inline vec vabs(vec a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
static inline int any_above(vec a, float bar) {
    return _mm256_movemask_ps(_mm256_cmp_ps(a, _mm256_set1_ps(bar), _CMP_GT_OQ));
}
static inline int any_not_finite(vec a) {  /* inf or NaN */
    return _mm256_movemask_ps(_mm256_cmp_ps(a, _mm256_set1_ps(INFINITY), _CMP_NLT_UQ));
}
static inline float reduce_max(vec a) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
}
static inline lanes_t first_lanes(int64_t count) {  /* lanes below count (0..W) */
    const int c = (int)(count < 0 ? 0 : count > W ? W : count);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(c), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
static inline vec load_lanes(lanes_t lanes, const float *p) { return _mm256_maskload_ps(p, lanes); }
static inline index_t strides(int64_t dims) {
    return _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32((int)dims));
}
static inline vec gather_lanes(lanes_t lanes, index_t rows, const float *first) {
    return _mm256_mask_i32gather_ps(_mm256_setzero_ps(), first, rows, _mm256_castsi256_ps(lanes), 4);
}
#else
#define W 16
#define MR 6
#define NR 4
#define PANEL 512
typedef __m512 vec;
typedef __mmask16 lanes_t;
typedef __m512i index_t;
static inline vec vzero(void) { return _mm512_setzero_ps(); }
static inline vec vset1(float x) { return _mm512_set1_ps(x); }
static inline vec vload(const float *p) { return _mm512_load_ps(p); }
static inline void vstore(float *p, vec a) { _mm512_store_ps(p, a); }
static inline vec vfma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
static inline vec vmax(vec a, vec b) { return _mm512_max_ps(a, b); }
static inline vec vabs(vec a) { return _mm512_abs_ps(a); }
static inline int any_above(vec a, float bar) {
    return _mm512_cmp_ps_mask(a, _mm512_set1_ps(bar), _CMP_GT_OQ);
}
static inline int any_not_finite(vec a) { return _mm512_cmp_ps_mask(a, _mm512_set1_ps(INFINITY), _CMP_NLT_UQ); }
static inline float reduce_max(vec a) { return _mm512_reduce_max_ps(a); }
static inline lanes_t first_lanes(int64_t count) {
    return count >= W ? (lanes_t)0xFFFF : count <= 0 ? (lanes_t)0 : (lanes_t)((1u << count) - 1);
}
static inline vec load_lanes(lanes_t lanes, const float *p) { return _mm512_maskz_loadu_ps(lanes, p); }
static inline index_t strides(int64_t dims) {
    return _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                              _mm512_set1_epi32((int)dims));
}
static inline vec gather_lanes(lanes_t lanes, index_t rows, const float *first) {
    return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), lanes, rows, first, 4);
}
#endif
#define TILE (W * NR)    /* items per tile */

static int excluded_item(const int64_t *excluded, int64_t count, int64_t item) {
    for (int64_t j = 0; j < count; ++j)
        if (excluded[j] == item) return 1;
    return 0;
}

/* Scan one user's TILE scores (items base.. in order) into the user's list of `top` best
 * (scores in descending order, the last one the bar a new item must beat). */
static void rescan(const float *scores, int64_t base, int64_t n, const int64_t *excluded,
                   int64_t count, int64_t top, float *list_score, int64_t *list_item) {
    for (int j = 0; j < TILE && base + j < n; ++j) {
        float s = scores[j];
        if (!(s > list_score[top - 1]) || excluded_item(excluded, count, base + j)) continue;
        int64_t at = top - 1;
        for (; at > 0 && list_score[at - 1] < s; --at) {  /* an equal score stays ahead */
            list_score[at] = list_score[at - 1];
            list_item[at] = list_item[at - 1];
        }
        list_score[at] = s;
        list_item[at] = base + j;
    }
}

/* The largest |x| over n floats, +inf if any is not finite. */
static float max_abs(const float *x, int64_t n) {
    vec m = vzero();
    int bad = 0;
    for (int64_t i = 0; i < n; i += W) {
        vec a = vabs(load_lanes(first_lanes(n - i), x + i));
        bad |= any_not_finite(a);
        m = vmax(m, a);
    }
    return bad ? INFINITY : reduce_max(m);
}

/* acc[r][c] = the scores of user r for the W items Wc.. of the tile at v (item factors
 * dimension by dimension, row stride PANEL; the tile's biases at bias). */
static inline __attribute__((always_inline)) void tile_scores(
        vec acc[MR][NR], const float *v, const float *bias, int64_t dims, const float *const u[MR]) {
    for (int c = 0; c < NR; ++c) {
        vec start = vload(bias + W * c);
        for (int r = 0; r < MR; ++r) acc[r][c] = start;
    }
    for (int64_t d = 0; d < dims; ++d, v += PANEL) {
        vec item[NR];
        for (int c = 0; c < NR; ++c) item[c] = vload(v + W * c);
        for (int r = 0; r < MR; ++r) {
            vec a = vset1(u[r][d]);
            for (int c = 0; c < NR; ++c) acc[r][c] = vfma(a, item[c], acc[r][c]);
        }
    }
}

/* Items p0 + g0 .. p0 + g1 (g0, g1 multiples of W within the panel; rows of dims factors)
 * into the panel buffer pack, dimension by dimension (W items by one gather), then their
 * biases (0 without); zero past item n. */
static void pack_items(const float *items, const float *bias, int64_t n, int64_t dims, int64_t p0,
                       int64_t g0, int64_t g1, float *pack) {
    const index_t rows = strides(dims);
    for (int64_t g = g0; g < g1; g += W) {
        const lanes_t lanes = first_lanes(n - (p0 + g));
        const float *first = items + (p0 + g) * dims;
        for (int64_t d = 0; d < dims; ++d)
            vstore(pack + d * PANEL + g, gather_lanes(lanes, rows, first + d));
        vstore(pack + dims * PANEL + g, bias ? load_lanes(lanes, bias + p0 + g) : vzero());
    }
}

/* Users of blocks lo .. hi (MR users each) against the packed panel of items p0 ..: each
 * tile's scores searched for entries of the users' lists (list_score, list_item: `top` per
 * user, user-major). */
static void search_panel(const float *users, const float *pack, int64_t b, int64_t dims, int64_t n,
                         int64_t p0, const int64_t *excluded, int64_t count, int64_t top,
                         int64_t lo, int64_t hi, float *list_score, int64_t *list_item) {
    float scores[TILE] __attribute__((aligned(64)));
    const int64_t tiles_end = n - p0 < PANEL ? n - p0 : PANEL;
    for (int64_t block = lo; block < hi; ++block) {
        const int64_t u0 = block * MR;
        const int rows = (int)(b - u0 < MR ? b - u0 : MR);
        const float *u[MR];
        for (int r = 0; r < MR; ++r)  /* a short block repeats its first user */
            u[r] = users + (u0 + (r < rows ? r : 0)) * dims;
        for (int64_t t = 0; t < tiles_end; t += TILE) {
            vec acc[MR][NR];
            tile_scores(acc, pack + t, pack + dims * PANEL + t, dims, u);
            for (int r = 0; r < rows; ++r) {
                float *user_score = list_score + (u0 + r) * top;
                vec m = acc[r][0];
                for (int c = 1; c < NR; ++c) m = vmax(m, acc[r][c]);
                if (any_above(m, user_score[top - 1])) {
                    for (int c = 0; c < NR; ++c) vstore(scores + W * c, acc[r][c]);
                    rescan(scores, p0 + t, n, excluded ? excluded + (u0 + r) * count : 0, count, top,
                           user_score, list_item + (u0 + r) * top);
                }
            }
        }
    }
}

/* The `top` items i of highest users[u] . items[i] + bias[i] for every user u, best first:
 * users [b, dims] and items [n, dims] row-major; bias [n] or NULL (none); excluded [b, count]
 * item ids per user (ids >= n, e.g. padding, never match) or NULL; best [b, top] out. Returns
 * 0; otherwise best is not all written and the caller's exact path decides: 1 where an input
 * is not finite or a score could overflow float32 (NaN rules included), 2 where memory ran
 * out, 3 where some user has fewer than `top` items not excluded. */
int best_dot(const float *users, const float *items, const float *bias, int64_t b, int64_t dims,
             int64_t n, const int64_t *excluded, int64_t count, int64_t top, int64_t *best,
             int threads) {
    float bound = max_abs(users, b * dims) * max_abs(items, n * dims) * (float)dims
                  + (bias ? max_abs(bias, n) : 0.0f);
    if (!(bound < 1e37f)) return 1;
    const int64_t blocks = (b + MR - 1) / MR;
    float *pack = aligned_alloc(64, (size_t)((dims + 1) * PANEL) * sizeof(float));
    float *list_score = malloc((size_t)(blocks * MR * top) * sizeof(float));
    int64_t *list_item = malloc((size_t)(blocks * MR * top) * sizeof(int64_t));
    if (!pack || !list_score || !list_item) {
        free(pack); free(list_score); free(list_item);
        return 2;
    }
    for (int64_t j = 0; j < blocks * MR * top; ++j) {
        list_score[j] = -INFINITY;  /* scores are finite: the first `top` allowed items enter */
        list_item[j] = -1;
    }
    /* The threads pack each panel together, then each searches it for its own users. */
    #pragma omp parallel num_threads(threads)
    {
        const int64_t share = omp_get_num_threads(), id = omp_get_thread_num();
        const int64_t lo = blocks * id / share, hi = blocks * (id + 1) / share;
        const int64_t groups = PANEL / W;
        for (int64_t p0 = 0; p0 < n; p0 += PANEL) {
            pack_items(items, bias, n, dims, p0, W * (groups * id / share),
                       W * (groups * (id + 1) / share), pack);
            #pragma omp barrier
            search_panel(users, pack, b, dims, n, p0, excluded, count, top, lo, hi, list_score,
                         list_item);
            #pragma omp barrier  /* the panel is searched by all before it is overwritten */
        }
    }
    int status = 0;
    for (int64_t j = 0; j < b * top; ++j)
        if (list_item[j] < 0) status = 3;
    if (status == 0) memcpy(best, list_item, (size_t)(b * top) * sizeof(int64_t));
    free(pack); free(list_score); free(list_item);
    return status;
}
