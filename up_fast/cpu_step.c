/* The CPU decoding step of the folded LSTM in one native call: the Gumbel band sampler and the cell.

   Built and loaded by up_fast/cpu_step.py, which checks it against the PyTorch step it replaces
   (up_fast/sampling.py) before using it. Every value is the one ATen computes, bit for bit:
   - the sigmoid is ATen's: 1 / (1 + exp(0 - x)) with the same Sleef exp on full blocks of
     2 * LANES numbers from the start of each of ATen's thread chunks, and libm's expf on the rest
     (`chunk` is the length of ATen's chunks for the tensor, computed by the caller);
   - every other op is rounded as in ATen's kernels, in their order: an FMA (fmaf) where ATen's is
     one (addcmul_, and add with alpha), and nothing else contracted (built with -ffp-contract=off).
   LANES is 16 (AVX-512) or 8 (AVX2), as the caller's ATen dispatches.

   The step runs on the threads of the OpenMP runtime that PyTorch itself uses (its GOMP_parallel,
   handed in by the caller), each taking a span of rows, and of the sigmoids' numbers split only
   between ATen's blocks: the values are the same on any number of threads. */

#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#if LANES == 16
typedef __m512 vec;
#define LOAD _mm512_loadu_ps
#define STORE _mm512_storeu_ps
#define SET1 _mm512_set1_ps
#define ADD _mm512_add_ps
#define SUB _mm512_sub_ps
#define DIV _mm512_div_ps
#define MAX _mm512_max_ps
#define MASK_GE(a, b) ((unsigned)_mm512_cmp_ps_mask(a, b, _CMP_GE_OQ)) /* one bit a lane */
#define MASK_NAN(a) ((unsigned)_mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q))
#elif LANES == 8
typedef __m256 vec;
#define LOAD _mm256_loadu_ps
#define STORE _mm256_storeu_ps
#define SET1 _mm256_set1_ps
#define ADD _mm256_add_ps
#define SUB _mm256_sub_ps
#define DIV _mm256_div_ps
#define MAX _mm256_max_ps
#define MASK_GE(a, b) ((unsigned)_mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_GE_OQ)))
#define MASK_NAN(a) ((unsigned)_mm256_movemask_ps(_mm256_cmp_ps(a, a, _CMP_UNORD_Q)))
#else
#error "LANES must be 16 or 8"
#endif

typedef vec (*vec_exp)(vec); /* Sleef's exp, the one ATen's Vectorized<float>::exp calls */
typedef void (*gomp_parallel_fn)(void (*)(void *), void *, unsigned, unsigned);
typedef void (*gomp_barrier_fn)(void);
typedef int (*omp_int_fn)(void);

typedef struct {
    const float *table;  /* (num_tokens, 4 * hidden): embed @ W_ih^T + biases, gates (i, f, o, g) */
    float *gates;        /* (batch, 4 * hidden) scratch */
    float *half_h;       /* (batch, hidden): h / 2 */
    float *double_c;     /* (batch, hidden): 2 c */
    float *floors;       /* (batch,) scratch: each row's band floor, NaN for a row holding a NaN */
    int64_t *counts;     /* (batch,) scratch: each row's candidates */
    int64_t batch, hidden, num_tokens;
    int64_t gates_chunk, state_chunk; /* ATen's thread chunks for (batch, 4 * hidden) and (batch, hidden) */
    vec_exp exp;
    /* the band (up_fast/band.py): floor = floor_offset + floor_alpha * leaky_relu(top, floor_slope) */
    float floor_offset, floor_slope, floor_alpha;
    /* PyTorch's OpenMP runtime; parallel is NULL where the step runs on the calling thread alone */
    int64_t threads;
    gomp_parallel_fn parallel;
    gomp_barrier_fn barrier;
    omp_int_fn thread_num, num_threads;
} lstm_step_args;

/* one call's work, shared by the threads of its team */
typedef struct {
    const lstm_step_args *a;
    const int64_t *tokens;      /* (batch,) the cell's input tokens, or NULL: sample them into winners */
    const float *product;       /* (batch, 4 * hidden [+ num_tokens]) rows `stride` apart: recurrent term [, logits] */
    int64_t stride;
    const float *noise;         /* T * G, `available` numbers */
    int64_t available;
    int64_t *winners;           /* (batch,) */
    int64_t taken;              /* out: noise numbers taken, or minus those needed */
    unsigned csr;               /* the caller's MXCSR */
} step_job;

static float sigmoid_scalar(float x) { return 1.0f / (1.0f + expf(-x)); }

/* where a team member's share of an n-number sigmoid starts: rounded down to a start of one of
   ATen's vector blocks (or inside a chunk's scalar tail), so that no block is split */
static int64_t sigmoid_split(int64_t n, int64_t chunk, int64_t member, int64_t team) {
    if (member >= team) return n;
    int64_t p = n * member / team, start = p / chunk * chunk;
    return start + (p - start) / (2 * LANES) * (2 * LANES);
}

/* sigmoid of x[begin:end] in place, of a contiguous tensor of n numbers, blocked as ATen blocks it:
   its chunks of `chunk` numbers, each 2 * LANES at a time from its start, the rest one by one */
static void sigmoid_span(float *x, int64_t n, int64_t chunk, int64_t begin, int64_t end, vec_exp exp) {
    const vec zero = SET1(0.0f), one = SET1(1.0f);
    int64_t i = begin;
    while (i < end) {
        int64_t chunk_end = (i / chunk + 1) * chunk;
        chunk_end = chunk_end < n ? chunk_end : n;
        int64_t stop = chunk_end < end ? chunk_end : end;
        for (; i + 2 * LANES <= chunk_end && i < stop; i += 2 * LANES) {
            vec a = LOAD(x + i), b = LOAD(x + i + LANES);
            a = DIV(one, ADD(one, exp(SUB(zero, a))));
            b = DIV(one, ADD(one, exp(SUB(zero, b))));
            STORE(x + i, a);
            STORE(x + i + LANES, b);
        }
        for (; i < stop; i++) x[i] = sigmoid_scalar(x[i]);
    }
}

/* Each row's largest logit, NaN when the row holds one; vectorised (the order of a max is immaterial:
   the values are not NaN, and a zero's sign does not change the floor made from it). */
static float row_top(const float *l, int64_t n) {
    int64_t k = 0;
    unsigned nan = 0;
    float top = -INFINITY;
    if (n >= LANES) {
        vec m = LOAD(l);
        nan |= MASK_NAN(m);
        for (k = LANES; k + LANES <= n; k += LANES) {
            vec v = LOAD(l + k);
            nan |= MASK_NAN(v);
            m = MAX(m, v);
        }
        float lanes[LANES];
        STORE(lanes, m);
        for (int j = 0; j < LANES; j++) top = lanes[j] > top ? lanes[j] : top;
    }
    for (; k < n; k++) {
        nan |= isnan(l[k]);
        top = l[k] > top ? l[k] : top;
    }
    return nan ? NAN : top;
}

/* the band's floor of each row in [begin, end) of the logits (rows `stride` apart), and how many
   candidates (logit >= floor) it has */
static void band_count(const lstm_step_args *a, const float *logits, int64_t stride, int64_t begin, int64_t end) {
    const int64_t V = a->num_tokens;
    for (int64_t row = begin; row < end; row++) {
        const float *l = logits + row * stride;
        float top = row_top(l, V);
        float leaky = top > 0.0f ? top : top * a->floor_slope;
        float floor = fmaf(leaky, a->floor_alpha, a->floor_offset); /* torch.add(offset, leaky, alpha=) */
        int64_t count = 0;
        a->floors[row] = floor;
        if (!isnan(floor)) {
            const vec floors = SET1(floor);
            int64_t k = 0;
            for (; k + LANES <= V; k += LANES) count += __builtin_popcount(MASK_GE(LOAD(l + k), floors));
            for (; k < V; k++) count += l[k] >= floor;
        }
        a->counts[row] = count;
    }
}

/* each row's winner in [begin, end): the first maximum of logit + noise over its candidates, their
   noise read in row-major order from `noise`, which holds this span's; a row holding a NaN is won by
   its first NaN, with no candidate (as torch.max and the band's comparison give) */
static void band_pick(const lstm_step_args *a, const float *logits, int64_t stride, const float *noise,
                      int64_t begin, int64_t end, int64_t *winners) {
    const int64_t V = a->num_tokens;
    int64_t taken = 0;
    for (int64_t row = begin; row < end; row++) {
        const float *l = logits + row * stride;
        const float floor = a->floors[row];
        if (isnan(floor)) { /* the row holds a NaN (the caller keeps the band's offset finite) */
            int64_t k = 0;
            while (k < V - 1 && !isnan(l[k])) k++;
            winners[row] = k;
            continue;
        }
        const vec floors = SET1(floor);
        int64_t winner = -1;
        float best = 0.0f;
        for (int64_t block = 0; block < V; block += LANES) {
            unsigned mask = 0;
            if (block + LANES <= V) {
                mask = MASK_GE(LOAD(l + block), floors);
            } else {
                for (int64_t k = block; k < V; k++) mask |= (unsigned)(l[k] >= floor) << (k - block);
            }
            for (; mask; mask &= mask - 1) {
                int64_t k = block + __builtin_ctz(mask);
                float score = l[k] + noise[taken++];
                if (winner < 0 || score > best) { /* scores are not NaN: logits are not, nor is the noise */
                    winner = k;
                    best = score;
                }
            }
        }
        winners[row] = winner;
    }
}

static void team_barrier(const lstm_step_args *a, int64_t team) {
    if (team > 1) a->barrier();
}

/* a team member's part of the step: the band (when sampling), then the cell
   gates = table[tokens] + recurrent term; sigmoid; 2c = f 2c + 4 i g - 2 i; h / 2 = o sigmoid(2c) - o / 2
   (up_fast/cells.py, in its op order) */
static void step_member(step_job *job, int64_t member, int64_t team) {
    const lstm_step_args *a = job->a;
    const int64_t hidden = a->hidden, width = 4 * hidden, batch = a->batch;
    const int64_t begin = batch * member / team, end = batch * (member + 1) / team;
    const int64_t *tokens = job->tokens;

    if (!tokens) {
        const float *logits = job->product + width;
        band_count(a, logits, job->stride, begin, end);
        team_barrier(a, team);
        int64_t needed = 0, offset = 0;
        for (int64_t row = 0; row < batch; row++) {
            offset += row < begin ? a->counts[row] : 0;
            needed += a->counts[row];
        }
        if (needed > job->available) { /* every member sees this, and none writes */
            if (member == 0) job->taken = -needed;
            return;
        }
        band_pick(a, logits, job->stride, job->noise + offset, begin, end, job->winners);
        if (member == 0) job->taken = needed;
        tokens = job->winners;
    }

    for (int64_t row = begin; row < end; row++) {
        const float *input = a->table + tokens[row] * width, *recurrent = job->product + row * job->stride;
        float *gates = a->gates + row * width;
        for (int64_t k = 0; k < width; k++) gates[k] = input[k] + recurrent[k];
    }
    team_barrier(a, team);
    const int64_t n_gates = batch * width, n_state = batch * hidden;
    sigmoid_span(a->gates, n_gates, a->gates_chunk, sigmoid_split(n_gates, a->gates_chunk, member, team),
                 sigmoid_split(n_gates, a->gates_chunk, member + 1, team), a->exp);
    team_barrier(a, team);
    for (int64_t row = begin; row < end; row++) {
        const float *i = a->gates + row * width, *f = i + hidden, *g = f + 2 * hidden;
        float *c = a->double_c + row * hidden, *h = a->half_h + row * hidden;
        for (int64_t k = 0; k < hidden; k++) {
            float v = c[k] * f[k];
            v = fmaf(4.0f * i[k], g[k], v); /* ATen's addcmul_ is contracted into an FMA */
            c[k] = v - 2.0f * i[k];
            h[k] = c[k];
        }
    }
    team_barrier(a, team);
    sigmoid_span(a->half_h, n_state, a->state_chunk, sigmoid_split(n_state, a->state_chunk, member, team),
                 sigmoid_split(n_state, a->state_chunk, member + 1, team), a->exp);
    team_barrier(a, team);
    for (int64_t row = begin; row < end; row++) {
        const float *o = a->gates + row * width + 2 * hidden;
        float *h = a->half_h + row * hidden;
        for (int64_t k = 0; k < hidden; k++) h[k] = h[k] * o[k] - 0.5f * o[k];
    }
}

/* each member computes under the caller's floating-point mode (torch.set_flush_denormal sets it on
   the calling thread only, which is where ATen runs ops of this size) */
static void step_team(void *data) {
    step_job *job = data;
    const unsigned own = _mm_getcsr();
    _mm_setcsr(job->csr);
    step_member(job, job->a->thread_num(), job->a->num_threads());
    _mm_setcsr(own);
}

static int64_t run_step(step_job *job) {
    const lstm_step_args *a = job->a;
    job->csr = _mm_getcsr();
    if (a->parallel && a->threads > 1 && a->batch > 1)
        a->parallel(step_team, job, (unsigned)a->threads, 0);
    else
        step_member(job, 0, 1);
    return job->taken;
}

/* the cell on `tokens` (batch,), with the recurrent term's rows `stride` apart in `hidden_gates` */
void lstm_cell(const lstm_step_args *a, const int64_t *tokens, const float *hidden_gates, int64_t stride) {
    step_job job = {a, tokens, hidden_gates, stride, 0, 0, 0, 0, 0};
    run_step(&job);
}

/* one decoding step: sample each row's token into `winners` from the logits in `product` (columns
   4 * hidden on), then advance the cell on them with the recurrent term in its first 4 * hidden
   columns. Returns the noise numbers taken, or minus the number needed when `available` is fewer:
   then nothing is written. */
int64_t lstm_decode_step(const lstm_step_args *a, const float *product, int64_t stride, const float *noise,
                         int64_t available, int64_t *winners) {
    step_job job = {a, 0, product, stride, noise, available, winners, 0, 0};
    return run_step(&job);
}
