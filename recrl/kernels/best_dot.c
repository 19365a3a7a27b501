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
 * beats it (a handful of times per user over the catalogue) are the scores above it visited in
 * item order, skipping the user's excluded items, each new entry inserted in the list by score.
 * Ties keep the earlier item first, as torch.max does.
 *
 * Built three times: for AVX-512 (vectors of 16 floats, tiles of 6 users x 64 items in 24 of
 * the 32 registers, panels of 512 items), with -DRECRL_AVX2 for AVX2 (vectors of 8, tiles of
 * 4 users x 24 items in 12 of the 16 registers, panels of 480), the same algorithm through the
 * vector helpers below, and with -DRECRL_BF16 for AVX-512 with the BF16 dot product. (AVX2
 * tiles of 6 x 16, the usual sgemm shape, ran 5% slower: each tile's check of its users' lists
 * came more often for the same work.)
 *
 * The BF16 build searches with factors rounded to bfloat16 (8 significant bits), two dimensions
 * per multiply-add (VDPBF16PS: twice the float32 FMA's work per instruction), keeping each
 * user's `top + SPARE(top)` best by those scores; then it scores that short list exactly as the
 * float32 build does (the same float32 FMAs in the same order) and proves the answer: every item
 * off the list scores at most its rounded score plus the rounding's bound, so where the list's
 * `top`-th exact score beats the list's last rounded score by more than that bound, the exact
 * top `top` are on the list. Users it cannot prove (near ties) are searched again in float32.
 * The answer is the float32 build's, item for item. Below BF16_MIN_ITEMS it searches in float32.
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

/* Whether this CPU runs the build (the caller also checks PyTorch's capability). */
int best_dot_runs_here(void) {
    __builtin_cpu_init();
#if defined(RECRL_AVX2)
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#elif defined(RECRL_BF16)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16");
#else
    return __builtin_cpu_supports("avx512f");
#endif
}

/* Users the BF16 build searched by rounded factors, and of those the ones it could not prove
 * and searched again in float32, since the library loaded (0 in the other builds). */
static int64_t rounded_users = 0, rechecked_users = 0;
int64_t best_dot_rounded(void) { return __atomic_load_n(&rounded_users, __ATOMIC_RELAXED); }
int64_t best_dot_rechecked(void) { return __atomic_load_n(&rechecked_users, __ATOMIC_RELAXED); }

static int excluded_item(const int64_t *excluded, int64_t count, int64_t item) {
    for (int64_t j = 0; j < count; ++j)
        if (excluded[j] == item) return 1;
    return 0;
}

/* Put item (score s) into a list of `length` (scores in descending order, the last one the bar
 * a new item must beat) if it beats the bar; an equal score stays ahead. */
static inline void enter(float s, int64_t item, int64_t length, float *list_score, int64_t *list_item) {
    int64_t at = length - 1;
    for (; at > 0 && list_score[at - 1] < s; --at) {
        list_score[at] = list_score[at - 1];
        list_item[at] = list_item[at - 1];
    }
    list_score[at] = s;
    list_item[at] = item;
}

/* One user's TILE scores (items base.. in order) that beat the user's list's bar, entered in
 * item order, skipping excluded items and those past n. */
static void rescan(const float *scores, int64_t base, int64_t n, const int64_t *excluded,
                   int64_t count, int64_t length, float *list_score, int64_t *list_item) {
    for (int c = 0; c < NR; ++c) {
        for (unsigned above = (unsigned)any_above(vload(scores + W * c), list_score[length - 1]);
             above; above &= above - 1) {  /* the lanes above the bar, lowest first */
            const int j = W * c + __builtin_ctz(above);
            if (base + j >= n || !(scores[j] > list_score[length - 1])
                || excluded_item(excluded, count, base + j))
                continue;
            enter(scores[j], base + j, length, list_score, list_item);
        }
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

/* Every user's accumulators of a tile start at the tile's items' biases. */
static inline __attribute__((always_inline)) void start_at_bias(vec acc[MR][NR], const float *bias) {
    for (int c = 0; c < NR; ++c) {
        vec start = vload(bias + W * c);
        for (int r = 0; r < MR; ++r) acc[r][c] = start;
    }
}

/* acc[r][c] = the scores of user r for the W items Wc.. of the tile at v (item factors
 * dimension by dimension, row stride PANEL; the tile's biases at bias). */
static inline __attribute__((always_inline)) void tile_scores(
        vec acc[MR][NR], const float *v, const float *bias, int64_t dims, const float *const u[MR]) {
    start_at_bias(acc, bias);
    for (int64_t d = 0; d < dims; ++d, v += PANEL) {
        vec item[NR];
        for (int c = 0; c < NR; ++c) item[c] = vload(v + W * c);
        for (int r = 0; r < MR; ++r) {
            vec a = vset1(u[r][d]);
            for (int c = 0; c < NR; ++c) acc[r][c] = vfma(a, item[c], acc[r][c]);
        }
    }
}

typedef void (*tile_fn)(vec acc[MR][NR], const float *v, const float *bias, int64_t words,
                        const float *const u[MR]);

/* Items p0 + g0 .. p0 + g1 (g0, g1 multiples of W within the panel; rows of `words` 32-bit
 * words: float32 factors, or pairs of bfloat16 ones) into the panel buffer pack, word by word
 * (W items by one gather), then their biases (0 without); zero past item n. */
static void pack_items(const float *items, const float *bias, int64_t n, int64_t words, int64_t p0,
                       int64_t g0, int64_t g1, float *pack) {
    const index_t rows = strides(words);
    for (int64_t g = g0; g < g1; g += W) {
        const lanes_t lanes = first_lanes(n - (p0 + g));
        const float *first = items + (p0 + g) * words;
        for (int64_t d = 0; d < words; ++d)
            vstore(pack + d * PANEL + g, gather_lanes(lanes, rows, first + d));
        vstore(pack + words * PANEL + g, bias ? load_lanes(lanes, bias + p0 + g) : vzero());
    }
}

/* Users of blocks lo .. hi (MR users each, rows of `words` words) against the packed panel of
 * items p0 ..: each tile's scores (by `tile`) searched for entries of the users' lists
 * (list_score, list_item: `length` per user, user-major). */
static inline __attribute__((always_inline)) void search_panel(
        const float *users, const float *pack, int64_t b, int64_t words, int64_t n, int64_t p0,
        const int64_t *excluded, int64_t count, int64_t length, int64_t lo, int64_t hi,
        float *list_score, int64_t *list_item, tile_fn tile) {
    float scores[TILE] __attribute__((aligned(64)));
    const int64_t tiles_end = n - p0 < PANEL ? n - p0 : PANEL;
    for (int64_t block = lo; block < hi; ++block) {
        const int64_t u0 = block * MR;
        const int rows = (int)(b - u0 < MR ? b - u0 : MR);
        const float *u[MR];
        for (int r = 0; r < MR; ++r)  /* a short block repeats its first user */
            u[r] = users + (u0 + (r < rows ? r : 0)) * words;
        for (int64_t t = 0; t < tiles_end; t += TILE) {
            vec acc[MR][NR];
            tile(acc, pack + t, pack + words * PANEL + t, words, u);
            for (int r = 0; r < MR; ++r) {  /* constant bounds keep acc in registers */
                if (r >= rows) break;
                float *user_score = list_score + (u0 + r) * length;
                vec m = acc[r][0];
                for (int c = 1; c < NR; ++c) m = vmax(m, acc[r][c]);
                if (any_above(m, user_score[length - 1])) {
                    for (int c = 0; c < NR; ++c) vstore(scores + W * c, acc[r][c]);
                    rescan(scores, p0 + t, n, excluded ? excluded + (u0 + r) * count : 0, count, length,
                           user_score, list_item + (u0 + r) * length);
                }
            }
        }
    }
}

static void search_panel_f32(const float *users, const float *pack, int64_t b, int64_t words, int64_t n,
                             int64_t p0, const int64_t *excluded, int64_t count, int64_t length,
                             int64_t lo, int64_t hi, float *list_score, int64_t *list_item) {
    search_panel(users, pack, b, words, n, p0, excluded, count, length, lo, hi, list_score, list_item,
                 tile_scores);
}

/* Lists of `length` per user, all empty (scores are finite: the first allowed items enter). */
static int new_lists(int64_t users, int64_t length, float **list_score, int64_t **list_item) {
    *list_score = malloc((size_t)(users * length) * sizeof(float));
    *list_item = malloc((size_t)(users * length) * sizeof(int64_t));
    if (!*list_score || !*list_item) {
        free(*list_score); free(*list_item);
        *list_score = NULL;
        *list_item = NULL;
        return 0;
    }
    for (int64_t j = 0; j < users * length; ++j) {
        (*list_score)[j] = -INFINITY;
        (*list_item)[j] = -1;
    }
    return 1;
}

/* The users' lists of the `top` best items by float32 scores (best_dot's arguments); 0, or
 * 2 where memory ran out, 3 where some user has fewer than `top` items not excluded. */
static int search_f32(const float *users, const float *items, const float *bias, int64_t b,
                      int64_t dims, int64_t n, const int64_t *excluded, int64_t count, int64_t top,
                      int64_t *best, int threads) {
    const int64_t blocks = (b + MR - 1) / MR;
    float *pack = aligned_alloc(64, (size_t)((dims + 1) * PANEL) * sizeof(float));
    float *list_score;
    int64_t *list_item;
    if (!pack || !new_lists(blocks * MR, top, &list_score, &list_item)) {
        free(pack);
        return 2;
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
            search_panel_f32(users, pack, b, dims, n, p0, excluded, count, top, lo, hi, list_score,
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

/* The largest |value| of the users' factors, the items' factors and the biases (0 without),
 * each +inf if any value is not finite: measured once a call, read by every check below. */
typedef struct { float users, items, bias; } magnitudes;

static magnitudes largest_magnitudes(const float *users, const float *items, const float *bias,
                                     int64_t b, int64_t dims, int64_t n) {
    magnitudes m = {max_abs(users, b * dims), max_abs(items, n * dims), bias ? max_abs(bias, n) : 0.0f};
    return m;
}

/* Whether every input is finite and no score can overflow float32 (else best_dot returns 1). */
static int scores_bounded(magnitudes m, int64_t dims) {
    return m.users * m.items * (float)dims + m.bias < 1e37f;
}

#ifdef RECRL_BF16
/* The catalogue size from which the rounded search pays: below it, a user's fixed costs (its
 * first tile, where every score enters the emptier list, and the proof) outweigh the halved
 * multiply-adds. Measured (1,024 users, 32 dimensions, 2 threads) against the float32 search:
 * top 1 0.5x at 512 items, 1.0x at 3,000, 1.3x at 5,000, 1.2-1.4x at 10,000; top 10
 * 1.1-1.3x at 10,000, 1.35x at 20,000. */
#define BF16_MIN_ITEMS(top) (4096 + 512 * (top))

/* List entries past `top` that the rounded search keeps for the proof: more prove more users
 * (the gap from the top-th score to the last must beat the rounding) but cost more list
 * updates. At 1,024 users x 10,000 items, of 0, 1, 3 and 6 spare entries 3 was fastest for
 * top 1 (2 users of 1,024 unproven, 0 with 6); for top 10, 6 spare 4.13 ms (2 unproven), 10
 * spare 4.51 ms (none), 3 spare 4.36 ms (132 unproven). */
#define SPARE(top) (3 + (top) / 2)

/* x rounded to bfloat16 (to nearest, ties to even; x finite), its 16 bits. */
static inline uint32_t bf16_bits(float x) {
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    return (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
}

/* Rows first .. last of x [rows, dims] as pairs of bfloat16 (dimension 2p in the low half of
 * word p, a zero past an odd dims): out [rows, (dims + 1) / 2] words. */
static void to_bf16_pairs(const float *x, int64_t dims, int64_t first, int64_t last, uint32_t *out) {
    const int64_t words = (dims + 1) / 2;
    if (dims % 2 == 0) {  /* the rows are one run of pairs: 8 words from 16 floats at a time */
        const float *from = x + first * dims, *end = x + last * dims;
        uint32_t *to = out + first * words;
        const __m512i one = _mm512_set1_epi32(1), half = _mm512_set1_epi32(0x7FFF);
        for (; from + W <= end; from += W, to += W / 2) {
            __m512i bits = _mm512_castps_si512(_mm512_loadu_ps(from));
            __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), one);
            bits = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(half, odd)), 16);
            _mm256_storeu_si256((__m256i *)to, _mm512_cvtepi32_epi16(bits));
        }
        for (; from < end; from += 2, ++to) *to = bf16_bits(from[0]) | bf16_bits(from[1]) << 16;
        return;
    }
    for (int64_t i = first; i < last; ++i)
        for (int64_t p = 0; p < words; ++p) {
            const float *pair = x + i * dims + 2 * p;
            out[i * words + p] = bf16_bits(pair[0]) | (2 * p + 1 < dims ? bf16_bits(pair[1]) << 16 : 0);
        }
}

/* As tile_scores, on pairs of bfloat16 factors: `words` pairs, two dimensions a multiply-add. */
static inline __attribute__((always_inline)) void tile_scores_bf16(
        vec acc[MR][NR], const float *v, const float *bias, int64_t words, const float *const u[MR]) {
    start_at_bias(acc, bias);
    for (int64_t p = 0; p < words; ++p, v += PANEL) {
        __m512bh item[NR];
        for (int c = 0; c < NR; ++c) item[c] = (__m512bh)_mm512_load_si512((const void *)(v + W * c));
        for (int r = 0; r < MR; ++r) {
            __m512bh a = (__m512bh)_mm512_castps_si512(vset1(u[r][p]));  /* the pair's bits */
            for (int c = 0; c < NR; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], a, item[c]);
        }
    }
}

static void search_panel_bf16(const float *users, const float *pack, int64_t b, int64_t words, int64_t n,
                              int64_t p0, const int64_t *excluded, int64_t count, int64_t length,
                              int64_t lo, int64_t hi, float *list_score, int64_t *list_item) {
    search_panel(users, pack, b, words, n, p0, excluded, count, length, lo, hi, list_score, list_item,
                 tile_scores_bf16);
}

/* The float32 scores of one user and `listed` items as the float32 build makes them: the bias,
 * then one FMA per dimension in order (the items' chains interleaved). */
static void exact_scores(const float *u, const float *items, const float *bias, const int64_t *item,
                         int64_t listed, int64_t dims, float *score) {
    for (int64_t j = 0; j < listed; ++j) score[j] = bias ? bias[item[j]] : 0.0f;
    for (int64_t d = 0; d < dims; ++d)
        for (int64_t j = 0; j < listed; ++j) score[j] = fmaf(u[d], items[item[j] * dims + d], score[j]);
}

/* One user's proof: its list (`length` entries by rounded score) rescored exactly and sorted
 * by exact score (the earlier item first of equal ones), its top `top` written to best; 1 where
 * no item off the list can beat them: every such item's exact score is at most the list's last
 * rounded score plus `slack`, and the top-th exact score is above that. 0: not proven (a near
 * tie, or fewer than `top` items listed). */
static int prove_user(const float *u, const float *items, const float *bias, int64_t dims,
                      const float *list_score, const int64_t *list_item, int64_t length, int64_t top,
                      double slack, int64_t *best) {
    float exact[length], score[length];
    int64_t item[length];
    int64_t listed = 0;
    while (listed < length && list_item[listed] >= 0) ++listed;
    if (listed < top) return 0;
    exact_scores(u, items, bias, list_item, listed, dims, exact);
    for (int64_t j = 0; j < listed; ++j) {  /* insertion by (exact score, item) */
        int64_t at = j;
        for (; at > 0 && (score[at - 1] < exact[j] || (score[at - 1] == exact[j] && item[at - 1] > list_item[j])); --at) {
            score[at] = score[at - 1];
            item[at] = item[at - 1];
        }
        score[at] = exact[j];
        item[at] = list_item[j];
    }
    /* a list with room left holds every allowed item */
    if (listed == length && !((double)score[top - 1] > (double)list_score[length - 1] + slack)) return 0;
    memcpy(best, item, (size_t)top * sizeof(int64_t));
    return 1;
}

/* The largest squared norm of rows first .. last of x [rows, dims], from above (float32 sums,
 * raised by their rounding's bound). */
static double max_norm2(const float *x, int64_t dims, int64_t first, int64_t last) {
    float top = 0.0f;
    for (int64_t i = first; i < last; ++i) {
        vec acc = vzero();
        for (int64_t d = 0; d < dims; d += W) {
            vec a = load_lanes(first_lanes(dims - d), x + i * dims + d);
            acc = vfma(a, a, acc);
        }
        const float s = _mm512_reduce_add_ps(acc);
        top = s > top ? s : top;
    }
    return (double)top * (1.0 + (double)(dims + W) * 0x1p-23);
}

/* How far a score by rounded factors, or the float32 one, can be from the real one, for a user
 * of norm unorm: the rounding of each factor (relative 2^-9, so 2^-8 + 2^-18 a product) on
 * sum |u_d v_d| <= unorm * vnorm (Cauchy-Schwarz, vnorm the largest item norm), the float32
 * sums of both scores (dims + 2 additions, each relative 2^-24, on at most bias + that sum),
 * and denormals flushed to zero (absolute: a bfloat16 factor below 2^-126 read as 0 loses up to
 * 2^-126 times the other factor, and each of the at most 2 dims + 4 additions of both sums may
 * flush 2^-126; twice that, generously). The proof compares the float32 score with the rounded
 * one, so both scores' errors count. */
static double rounding_slack(double unorm, double vnorm, double bias_max, double umax, double vmax,
                             int64_t dims) {
    const double terms = unorm * vnorm * (1.0 + 1e-6) + bias_max;
    const double gamma = (double)(dims + 2) * 0x1p-24 / (1.0 - (double)(dims + 2) * 0x1p-24);
    return unorm * vnorm * (1.0 + 1e-6) * (0x1p-8 + 0x1p-18) + 2.0 * gamma * terms * (1.0 + 0x1p-7)
           + 4.0 * (double)(dims + 2) * 0x1p-126 * (1.0 + umax + vmax);
}

/* The bfloat16 search and its proof over preallocated buffers (search_bf16's): each proven
 * user's answer in best and proven[u] = 1; returns the number of users not proven. */
static int64_t search_and_prove(const float *users, const float *items, const float *bias, int64_t b,
                                int64_t dims, int64_t n, const int64_t *excluded, int64_t count,
                                int64_t top, int64_t length, int64_t *best, int threads, magnitudes m,
                                float *pack, uint32_t *user_words, uint32_t *item_words,
                                double *item_norm2, float *list_score, int64_t *list_item, char *proven) {
    const int64_t blocks = (b + MR - 1) / MR, words = (dims + 1) / 2;
    int64_t unproven = 0;
    #pragma omp parallel num_threads(threads) reduction(+:unproven)
    {
        const int64_t share = omp_get_num_threads(), id = omp_get_thread_num();
        const int64_t lo = blocks * id / share, hi = blocks * (id + 1) / share;
        const int64_t u_lo = lo * MR < b ? lo * MR : b, u_hi = hi * MR < b ? hi * MR : b;
        const int64_t i_lo = n * id / share, i_hi = n * (id + 1) / share;
        to_bf16_pairs(users, dims, u_lo, u_hi, user_words);  /* each thread reads only its own users */
        to_bf16_pairs(items, dims, i_lo, i_hi, item_words);
        item_norm2[id] = max_norm2(items, dims, i_lo, i_hi);
        const int64_t groups = PANEL / W;
        #pragma omp barrier
        for (int64_t p0 = 0; p0 < n; p0 += PANEL) {
            pack_items((const float *)item_words, bias, n, words, p0, W * (groups * id / share),
                       W * (groups * (id + 1) / share), pack);
            #pragma omp barrier
            search_panel_bf16((const float *)user_words, pack, b, words, n, p0, excluded, count, length,
                              lo, hi, list_score, list_item);
            #pragma omp barrier
        }
        double vnorm2 = 0.0;
        for (int64_t t = 0; t < share; ++t) vnorm2 = item_norm2[t] > vnorm2 ? item_norm2[t] : vnorm2;
        for (int64_t i = u_lo; i < u_hi; ++i) {
            const float *u = users + i * dims;
            const double slack = rounding_slack(sqrt(max_norm2(users, dims, i, i + 1)), sqrt(vnorm2),
                                                m.bias, m.users, m.items, dims);
            proven[i] = (char)prove_user(u, items, bias, dims, list_score + i * length,
                                         list_item + i * length, length, top, slack, best + i * top);
            unproven += !proven[i];
        }
    }
    return unproven;
}

/* The users not proven searched again in float32, gathered into rows of their own, their
 * answers put in best; search_f32's return value. */
static int recheck(const float *users, const float *items, const float *bias, int64_t b, int64_t dims,
                   int64_t n, const int64_t *excluded, int64_t count, int64_t top, const char *proven,
                   int64_t unproven, int64_t *best, int threads) {
    float *again_users = malloc((size_t)(unproven * dims) * sizeof(float));
    int64_t *again_excluded = count ? malloc((size_t)(unproven * count) * sizeof(int64_t)) : NULL;
    int64_t *again_best = malloc((size_t)(unproven * top) * sizeof(int64_t));
    int status = 2;
    if (again_users && (!count || again_excluded) && again_best) {
        for (int64_t i = 0, k = 0; i < b; ++i) {
            if (proven[i]) continue;
            memcpy(again_users + k * dims, users + i * dims, (size_t)dims * sizeof(float));
            if (count) memcpy(again_excluded + k * count, excluded + i * count, (size_t)count * sizeof(int64_t));
            ++k;
        }
        status = search_f32(again_users, items, bias, unproven, dims, n, again_excluded, count, top,
                            again_best, n * dims < 65536 ? 1 : threads);  /* packing the catalogue is most of it */
        for (int64_t i = 0, k = 0; status == 0 && i < b; ++i)
            if (!proven[i]) memcpy(best + i * top, again_best + (k++) * top, (size_t)top * sizeof(int64_t));
    }
    free(again_users); free(again_excluded); free(again_best);
    return status;
}

/* The search by bfloat16 factors with its proof (the file's header), the unproven users then
 * searched by search_f32; best_dot's arguments and return values. */
static int search_bf16(const float *users, const float *items, const float *bias, int64_t b,
                       int64_t dims, int64_t n, const int64_t *excluded, int64_t count, int64_t top,
                       int64_t *best, int threads, magnitudes m) {
    if (n < BF16_MIN_ITEMS(top) || m.users > 1e38f || m.items > 1e38f)
        /* a small catalogue, or factors near float32's largest (bfloat16 would round them to inf) */
        return search_f32(users, items, bias, b, dims, n, excluded, count, top, best, threads);
    const int64_t blocks = (b + MR - 1) / MR, words = (dims + 1) / 2, length = top + SPARE(top);
    float *pack = aligned_alloc(64, (size_t)((words + 1) * PANEL) * sizeof(float));
    uint32_t *user_words = malloc((size_t)(b * words) * sizeof(uint32_t));
    uint32_t *item_words = malloc((size_t)(n * words) * sizeof(uint32_t));
    double *item_norm2 = malloc((size_t)threads * sizeof(double));
    char *proven = malloc((size_t)b);
    float *list_score = NULL;
    int64_t *list_item = NULL;
    int status = 2;
    if (pack && user_words && item_words && item_norm2 && proven
        && new_lists(blocks * MR, length, &list_score, &list_item)) {
        const int64_t unproven = search_and_prove(users, items, bias, b, dims, n, excluded, count, top,
                                                  length, best, threads, m, pack, user_words, item_words,
                                                  item_norm2, list_score, list_item, proven);
        __atomic_add_fetch(&rounded_users, b, __ATOMIC_RELAXED);
        __atomic_add_fetch(&rechecked_users, unproven, __ATOMIC_RELAXED);
        status = unproven ? recheck(users, items, bias, b, dims, n, excluded, count, top, proven, unproven,
                                    best, threads) : 0;
    }
    free(pack); free(user_words); free(item_words); free(item_norm2); free(proven);
    free(list_score); free(list_item);
    return status;
}
#endif

/* The `top` items i of highest users[u] . items[i] + bias[i] for every user u, best first:
 * users [b, dims] and items [n, dims] row-major; bias [n] or NULL (none); excluded [b, count]
 * item ids per user (ids >= n, e.g. padding, never match) or NULL; best [b, top] out. Returns
 * 0; otherwise best is not all written and the caller's exact path decides: 1 where an input
 * is not finite or a score could overflow float32 (NaN rules included), 2 where memory ran
 * out, 3 where some user has fewer than `top` items not excluded. */
int best_dot(const float *users, const float *items, const float *bias, int64_t b, int64_t dims,
             int64_t n, const int64_t *excluded, int64_t count, int64_t top, int64_t *best,
             int threads) {
    const magnitudes m = largest_magnitudes(users, items, bias, b, dims, n);
    if (!scores_bounded(m, dims)) return 1;
#ifdef RECRL_BF16
    return search_bf16(users, items, bias, b, dims, n, excluded, count, top, best, threads, m);
#else
    return search_f32(users, items, bias, b, dims, n, excluded, count, top, best, threads);
#endif
}
