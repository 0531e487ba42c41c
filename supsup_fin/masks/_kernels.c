/* Fused per-weight passes of the edge-popup trainer (CPU), built at install time.
 *
 * The trainer's per-weight work is a chain of memory-bound torch ops over [T, out, in] scores:
 * |S|, two compares and a xor to find the band around the last k-th value, a count, keep ->
 * float, times W, sign(S) and two straight-through products. Each op is one pass over the
 * scores, so that work runs at some 20 passes a step. The two kernels here do it in two:
 *
 *   band_pass  one read of S: out = W * (|S| > hi) per task row, the number of entries kept
 *              outright per row, and the band entries (lo <= |S| <= hi) compacted row-major
 *              as (row, column, |S|) for the caller's sort.
 *   ste_grad   one read of the weight gradient and S: dS = (dW_eff * W) * sign(S).
 *
 * Every value is computed with the same float operations in the same order as the torch ops
 * they replace (products only, no contraction), so the results are bit-identical; the tests
 * compare both paths. Arguments are raw addresses (tensor.data_ptr()) of contiguous tensors
 * whose shapes and dtypes the Python side (supsup_fin/masks/_native.py) checks. Work is split
 * into (row, column chunk) items over n_threads OpenMP threads; each element is computed on its
 * own, so the thread count never changes a result. The GIL is released meanwhile.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
#define VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define VECTOR_CLONES
#endif

typedef struct {
    /* band_pass */
    const float *s;       /* [rows, n] scores */
    const void *w;        /* [n] weight, float32 or bf16 bits */
    int w_bf16;
    void *out;            /* [rows, n] W * keep, same dtype as w */
    const float *lo, *hi; /* [rows] band edges */
    int64_t *cols;        /* [rows * n] band columns (scratch, compacted at the end) */
    float *vals;          /* [rows * n] band |S| (scratch, compacted at the end) */
    int64_t *item_above, *item_inside;
    /* ste_grad */
    const void *g;        /* [rows, n] weight gradient, float32 or bf16 bits */
    int g_bf16;
    float *grad;          /* [rows, n] score gradient (may alias g when float32) */
    /* split */
    int64_t rows, n, chunks;
    int64_t first, last;  /* this thread's items */
} Job;

static inline int64_t chunk_start(int64_t n, int64_t chunks, int64_t c) { return n * c / chunks; }

static inline float bf16_to_float(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Band entries are rare (~0.3-3 % of a row), so the pass looks at blocks of BLOCK entries: a
 * vectorised pass writes out, counts the kept entries and flags whether the block holds a band
 * entry, and only flagged blocks are scanned again (branch-free: always store, advance on a hit).
 * A branch per entry on `|S| >= lo` is mispredicted half the time and ran 6x slower. */
#define BLOCK 32

/* One entry: write out, count it if kept, flag it if in the band. */
#define BAND_ENTRY(KEEP)                  \
    do {                                  \
        float m = fabsf(s[j]);            \
        int keep = m > hi;                \
        out[j] = KEEP;                    \
        above += keep;                    \
        hit |= (m >= lo) & (m <= hi);     \
    } while (0)

/* Full blocks have a constant trip count (one unrolled vector body, an int counter per block);
 * the row's tail block takes the same steps with a variable one. */
#define BAND_ROW(NAME, WTYPE, KEEP)                                                                    \
    VECTOR_CLONES                                                                                      \
    static int64_t NAME(const float *restrict s, const WTYPE *restrict w, WTYPE *restrict out, float lo, \
                        float hi, int64_t first, int64_t len, int64_t *restrict cols, float *restrict vals, \
                        int64_t *inside_out) {                                                         \
        int64_t total = 0, inside = 0;                                                                 \
        for (int64_t a = 0; a < len; a += BLOCK, s += BLOCK, w += BLOCK, out += BLOCK) {               \
            int above = 0, hit = 0, b = len - a < BLOCK ? (int)(len - a) : BLOCK;                      \
            if (b == BLOCK) {                                                                          \
                for (int j = 0; j < BLOCK; j++) BAND_ENTRY(KEEP);                                      \
            } else {                                                                                   \
                for (int j = 0; j < b; j++) BAND_ENTRY(KEEP);                                          \
            }                                                                                          \
            total += above;                                                                            \
            if (hit) {                                                                                 \
                for (int j = 0; j < b; j++) {                                                          \
                    float m = fabsf(s[j]);                                                             \
                    cols[inside] = first + a + j;                                                      \
                    vals[inside] = m;                                                                  \
                    inside += (m >= lo) & (m <= hi);                                                   \
                }                                                                                      \
            }                                                                                          \
        }                                                                                              \
        *inside_out = inside;                                                                          \
        return total;                                                                                  \
    }

/* float32: keep -> 1.0f / 0.0f, times W (what keep.to(float) * W computes, zeros signed alike) */
BAND_ROW(band_f32, float, (keep ? 1.0f : 0.0f) * w[j])
/* bf16: 1.0 * w = w; 0.0 * w = a zero with w's sign (what keep.to(bf16) * W gives) */
BAND_ROW(band_bf16, uint16_t, keep ? w[j] : (uint16_t)(w[j] & 0x8000u))

static void *band_worker(void *arg) {
    Job *job = (Job *)arg;
    for (int64_t item = job->first; item < job->last; item++) {
        int64_t r = item / job->chunks, c = item % job->chunks;
        int64_t a = chunk_start(job->n, job->chunks, c), b = chunk_start(job->n, job->chunks, c + 1);
        int64_t base = r * job->n;
        const float *s = job->s + base + a;
        int64_t *cols = job->cols + base + a;
        float *vals = job->vals + base + a;
        float hi = job->hi[r], lo = job->lo[r];
        int64_t inside;
        job->item_above[item] = job->w_bf16
            ? band_bf16(s, (const uint16_t *)job->w + a, (uint16_t *)job->out + base + a, lo, hi, a, b - a, cols,
                        vals, &inside)
            : band_f32(s, (const float *)job->w + a, (float *)job->out + base + a, lo, hi, a, b - a, cols, vals,
                       &inside);
        job->item_inside[item] = inside;
    }
    return NULL;
}

VECTOR_CLONES
static void grad_f32(const float *g, const float *w, const float *s, float *grad, int64_t len) {
    for (int64_t j = 0; j < len; j++) {
        float sign = (float)((0.0f < s[j]) - (s[j] < 0.0f));
        grad[j] = (g[j] * w[j]) * sign;
    }
}

VECTOR_CLONES
static void grad_bf16(const uint16_t *g, const float *w, const float *s, float *grad, int64_t len) {
    for (int64_t j = 0; j < len; j++) {
        float sign = (float)((0.0f < s[j]) - (s[j] < 0.0f));
        grad[j] = (bf16_to_float(g[j]) * w[j]) * sign;
    }
}

static void *grad_worker(void *arg) {
    Job *job = (Job *)arg;
    for (int64_t item = job->first; item < job->last; item++) {
        int64_t r = item / job->chunks, c = item % job->chunks;
        int64_t a = chunk_start(job->n, job->chunks, c), b = chunk_start(job->n, job->chunks, c + 1);
        int64_t at = r * job->n + a;
        if (job->g_bf16)
            grad_bf16((const uint16_t *)job->g + at, (const float *)job->w + a, job->s + at, job->grad + at, b - a);
        else
            grad_f32((const float *)job->g + at, (const float *)job->w + a, job->s + at, job->grad + at, b - a);
    }
    return NULL;
}

/* Run worker over rows * chunks items on up to n_threads threads of the OpenMP runtime: torch's
 * own where it is the libgomp.so.1 the process has already loaded (its warm thread pool; POSIX
 * threads of our own ran ~2x slower right after a torch op, against torch's still-spinning
 * workers, and took ~40 us to start). Calls under MIN_PER_THREAD entries a thread stay on the
 * caller's thread; built without OpenMP, every call does. */
#define MIN_PER_THREAD (1 << 16)

static void run_split(Job *proto, int64_t n_threads, void *(*worker)(void *)) {
    int64_t items = proto->rows * proto->chunks, wanted = proto->rows * proto->n / MIN_PER_THREAD;
    if (n_threads > wanted) n_threads = wanted;
    if (n_threads > items) n_threads = items;
    if (n_threads > 64) n_threads = 64;
    if (n_threads < 1) n_threads = 1;
    Job jobs[64];
    for (int64_t k = 0; k < n_threads; k++) {
        jobs[k] = *proto;
        jobs[k].first = items * k / n_threads;
        jobs[k].last = items * (k + 1) / n_threads;
    }
#ifdef _OPENMP
#pragma omp parallel for num_threads((int)n_threads) schedule(static, 1) if (n_threads > 1)
#endif
    for (int64_t k = 0; k < n_threads; k++) worker(&jobs[k]);
}

static int64_t chunks_for(int64_t rows, int64_t n, int64_t n_threads) {
    /* enough items for every thread even with one task row; chunks of at least 4096 entries */
    int64_t chunks = rows >= n_threads ? 1 : (n_threads + rows - 1) / rows;
    while (chunks > 1 && n / chunks < 4096) chunks--;
    return chunks;
}

static PyObject *band_pass(PyObject *self, PyObject *args) {
    unsigned long long s, w, out, lo, hi, rows_out, cols, vals, above, inside;
    int w_bf16;
    long long rows, n, n_threads;
    if (!PyArg_ParseTuple(args, "KKpKKKLLKKKKKL", &s, &w, &w_bf16, &out, &lo, &hi, &rows, &n, &rows_out, &cols,
                          &vals, &above, &inside, &n_threads))
        return NULL;
    if (rows < 1 || n < 1) {
        PyErr_Format(PyExc_ValueError, "band_pass needs rows >= 1 and n >= 1, got rows=%lld, n=%lld", rows, n);
        return NULL;
    }
    Job job = {0};
    job.s = (const float *)(uintptr_t)s;
    job.w = (const void *)(uintptr_t)w;
    job.w_bf16 = w_bf16;
    job.out = (void *)(uintptr_t)out;
    job.lo = (const float *)(uintptr_t)lo;
    job.hi = (const float *)(uintptr_t)hi;
    job.cols = (int64_t *)(uintptr_t)cols;
    job.vals = (float *)(uintptr_t)vals;
    job.rows = rows;
    job.n = n;
    job.chunks = chunks_for(rows, n, n_threads);
    int64_t items = rows * job.chunks;
    job.item_above = (int64_t *)malloc(sizeof(int64_t) * items);
    job.item_inside = (int64_t *)malloc(sizeof(int64_t) * items);
    if (!job.item_above || !job.item_inside) {
        free(job.item_above);
        free(job.item_inside);
        return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS
    run_split(&job, n_threads, band_worker);
    Py_END_ALLOW_THREADS
    /* Per-row counts, then the band compacted to the front, row-major and by column. */
    int64_t *row_of = (int64_t *)(uintptr_t)rows_out, *above_of = (int64_t *)(uintptr_t)above;
    int64_t *inside_of = (int64_t *)(uintptr_t)inside;
    int64_t total = 0;
    for (int64_t r = 0; r < rows; r++) {
        above_of[r] = 0;
        inside_of[r] = 0;
    }
    for (int64_t item = 0; item < items; item++) {
        int64_t r = item / job.chunks, c = item % job.chunks, m = job.item_inside[item];
        int64_t from = r * n + chunk_start(n, job.chunks, c);
        above_of[r] += job.item_above[item];
        inside_of[r] += m;
        memmove(job.cols + total, job.cols + from, sizeof(int64_t) * m);
        memmove(job.vals + total, job.vals + from, sizeof(float) * m);
        for (int64_t j = 0; j < m; j++) row_of[total + j] = r;
        total += m;
    }
    free(job.item_above);
    free(job.item_inside);
    return PyLong_FromLongLong(total);
}

static PyObject *ste_grad(PyObject *self, PyObject *args) {
    unsigned long long g, w, s, grad;
    int g_bf16;
    long long rows, n, n_threads;
    if (!PyArg_ParseTuple(args, "KpKKKLLL", &g, &g_bf16, &w, &s, &grad, &rows, &n, &n_threads)) return NULL;
    if (rows < 1 || n < 1) {
        PyErr_Format(PyExc_ValueError, "ste_grad needs rows >= 1 and n >= 1, got rows=%lld, n=%lld", rows, n);
        return NULL;
    }
    Job job = {0};
    job.g = (const void *)(uintptr_t)g;
    job.g_bf16 = g_bf16;
    job.w = (const void *)(uintptr_t)w;
    job.s = (const float *)(uintptr_t)s;
    job.grad = (float *)(uintptr_t)grad;
    job.rows = rows;
    job.n = n;
    job.chunks = chunks_for(rows, n, n_threads);
    Py_BEGIN_ALLOW_THREADS
    run_split(&job, n_threads, grad_worker);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"band_pass", band_pass, METH_VARARGS,
     "band_pass(s, w, w_bf16, out, lo, hi, rows, n, rows_out, cols, vals, above, inside, n_threads) -> band size"},
    {"ste_grad", ste_grad, METH_VARARGS, "ste_grad(g, g_bf16, w, s, grad, rows, n, n_threads)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels",
                                    "Fused per-weight passes of the edge-popup trainer (see _native.py).", -1,
                                    methods};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&module); }
