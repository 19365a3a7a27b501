/* best_dot: each user's `top` highest-scoring items, the scores users[u] . items[i] + bias[i]
 * made and searched tile by tile in registers, never written to memory
 * (recrl/kernels/__init__.py builds and loads this file; README "A search fused into the product").
 *
 * The threads walk the catalogue a panel of PANEL items at a time: together they copy the
 * panel's factors dimension by dimension into one buffer (zero past the catalogue's end; the
 * items' biases, if any, as one more row), then each scores it against its share of the users,
 * MR at a time. A tile is MR users x TILE items: MR x NR accumulators of 16 floats (AVX-512),
 * each dimension of the tile's items loaded once and multiplied with the MR users' factor.
 * After the tile's last FMA each user's 64 scores are reduced by max into one vector and
 * compared with the lowest score of the user's list of `top` best so far; only where some score
 * beats it (a handful of times per user over the catalogue) are the 64 scores written to the
 * stack and scanned in item order, skipping the user's excluded items, each new entry inserted
 * in the list by score. Ties keep the earlier item first, as torch.max does.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

#define MR 6             /* users per tile */
#define NR 4             /* vectors of 16 items per tile */
#define TILE (16 * NR)   /* items per tile */
#define PANEL (8 * TILE) /* items per panel: a panel of 34 dimensions is 70 KB, in L2 */

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
    const __m512 inf = _mm512_set1_ps(INFINITY);
    __m512 m = _mm512_setzero_ps();
    __mmask16 bad = 0;
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 lanes = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        __m512 a = _mm512_abs_ps(_mm512_maskz_loadu_ps(lanes, x + i));
        bad |= _mm512_cmp_ps_mask(a, inf, _CMP_NLT_UQ);  /* inf or NaN */
        m = _mm512_max_ps(m, a);
    }
    return bad ? INFINITY : _mm512_reduce_max_ps(m);
}

/* acc[r][c] = the scores of user r for the 16 items 16c.. of the tile at v (item factors
 * dimension by dimension, row stride PANEL; the tile's biases at bias). */
static inline __attribute__((always_inline)) void tile_scores(
        __m512 acc[MR][NR], const float *v, const float *bias, int64_t dims, const float *const u[MR]) {
    for (int c = 0; c < NR; ++c) {
        __m512 start = _mm512_load_ps(bias + 16 * c);
        for (int r = 0; r < MR; ++r) acc[r][c] = start;
    }
    for (int64_t d = 0; d < dims; ++d, v += PANEL) {
        __m512 vec[NR];
        for (int c = 0; c < NR; ++c) vec[c] = _mm512_load_ps(v + 16 * c);
        for (int r = 0; r < MR; ++r) {
            __m512 a = _mm512_set1_ps(u[r][d]);
            for (int c = 0; c < NR; ++c) acc[r][c] = _mm512_fmadd_ps(a, vec[c], acc[r][c]);
        }
    }
}

/* Items p0 + g0 .. p0 + g1 (g0, g1 multiples of 16 within the panel; rows of dims factors)
 * into the panel buffer pack, dimension by dimension (16 items by one gather), then their
 * biases (0 without); zero past item n. */
static void pack_items(const float *items, const float *bias, int64_t n, int64_t dims, int64_t p0,
                       int64_t g0, int64_t g1, float *pack) {
    const __m512i rows = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32((int)dims));
    for (int64_t g = g0; g < g1; g += 16) {
        int64_t in = n - (p0 + g);
        __mmask16 lanes = in >= 16 ? (__mmask16)0xFFFF : in <= 0 ? 0 : (__mmask16)((1u << in) - 1);
        const float *first = items + (p0 + g) * dims;
        for (int64_t d = 0; d < dims; ++d)
            _mm512_store_ps(pack + d * PANEL + g,
                            _mm512_mask_i32gather_ps(_mm512_setzero_ps(), lanes, rows, first + d, 4));
        _mm512_store_ps(pack + dims * PANEL + g,
                        bias ? _mm512_maskz_loadu_ps(lanes, bias + p0 + g) : _mm512_setzero_ps());
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
            __m512 acc[MR][NR];
            tile_scores(acc, pack + t, pack + dims * PANEL + t, dims, u);
            for (int r = 0; r < rows; ++r) {
                float *user_score = list_score + (u0 + r) * top;
                __m512 m = _mm512_max_ps(_mm512_max_ps(acc[r][0], acc[r][1]),
                                         _mm512_max_ps(acc[r][2], acc[r][3]));
                if (_mm512_cmp_ps_mask(m, _mm512_set1_ps(user_score[top - 1]), _CMP_GT_OQ)) {
                    for (int c = 0; c < NR; ++c) _mm512_store_ps(scores + 16 * c, acc[r][c]);
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
        const int64_t groups = PANEL / 16;
        for (int64_t p0 = 0; p0 < n; p0 += PANEL) {
            pack_items(items, bias, n, dims, p0, 16 * (groups * id / share),
                       16 * (groups * (id + 1) / share), pack);
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
