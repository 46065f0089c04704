/*
 * One-pass, in-place MixUp/CutMix of a contiguous CPU batch, pair by pair.
 *
 * partner[] must be a symmetric pairing (partner[partner[i]] == i); sample i and j = partner[i]
 * swap content, each keeping a share of itself: lam[i] for sample i. A sample's partner share is
 * either 1 - lam[i] everywhere (a blend) or, where cut[i], 1 inside its box and 0 outside it
 * (CutMix). Both members of a pair are read once and written once, so the batch costs about one
 * read and one write of memory, like a copy; torch needs a gather into a second buffer and a
 * blend pass for the same result. The (B, K) targets, when given, are blended with 1 - lam.
 *
 * Blends use torch.lerp's formula (start + w * (end - start) for w < 0.5, end - (end - start) *
 * (1 - w) otherwise, with w rounded to the tensor's type first), so w = 0 and w = 1 reproduce a
 * sample exactly; shares of exactly 0 or 1 (CutMix boxes) are plain copies and swaps.
 *
 * Layout: x is (B, C, S0, S1, S2) in C order, spatial sizes padded with leading 1s; a box is
 * lo[i, d] <= position_d < hi[i, d] over the `dims` unpadded dimensions. Called from Python
 * through mix_pairs() (see its comment) with addresses and sizes as ints; the pairing and the
 * boxes are checked before any memory is written.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(_MSC_VER) && !defined(restrict)
#define restrict __restrict /* MSVC spells C99's restrict this way */
#endif

typedef struct {
    int64_t batch, channels, size[3];
    const int64_t *partner;
    const double *lam;  /* the share each sample keeps of itself */
    const uint8_t *cut; /* 1 where the sample gets a box; NULL: nobody does */
    const int64_t *lo, *hi;
    int64_t dims;       /* spatial dimensions of lo and hi: (batch, dims) arrays */
    void *target;       /* (batch, cols) targets to blend, or NULL */
    int64_t target_double, cols;
} Job;

/* Sample i's box over the padded (s0, s1, s2) grid; padded dimensions span their single row. */
static void box_of(const Job *job, int64_t i, int64_t lo[3], int64_t hi[3]) {
    int64_t k, pad = 3 - job->dims;
    for (k = 0; k < 3; k++) {
        lo[k] = k < pad ? 0 : job->lo[i * job->dims + k - pad];
        hi[k] = k < pad ? 1 : job->hi[i * job->dims + k - pad];
    }
}

/* The three things done to a stretch of n elements of two samples a and b. Elements are float
 * (wide == 0) or double (wide == 1); the typed loops are simple enough to be vectorised. */

/* a <- lerp(a, b, wa), b <- lerp(b, a, wb), both from the old values; w rounded to the type. */
#define BLEND_LOOP(T)                                                                             \
    do {                                                                                          \
        T *restrict pa = (T *)a, *restrict pb = (T *)b;                                           \
        const T ta = (T)wa, tb = (T)wb;                                                           \
        const int a_high = ta >= (T)0.5, b_high = tb >= (T)0.5;                                   \
        const T ca = a_high ? -((T)1 - ta) : ta, cb = b_high ? -((T)1 - tb) : tb;                 \
        for (j = 0; j < n; j++) {                                                                 \
            const T p = pa[j], q = pb[j], d = q - p;                                              \
            pa[j] = (a_high ? q : p) + ca * d;                                                    \
            pb[j] = (b_high ? p : q) - cb * d;                                                    \
        }                                                                                         \
    } while (0)

#define SWAP_LOOP(T)                                                                              \
    do {                                                                                          \
        T *restrict pa = (T *)a, *restrict pb = (T *)b;                                           \
        for (j = 0; j < n; j++) {                                                                 \
            const T t = pa[j];                                                                    \
            pa[j] = pb[j];                                                                        \
            pb[j] = t;                                                                            \
        }                                                                                         \
    } while (0)

static inline void blend(int wide, void *a, void *b, int64_t n, double wa, double wb) {
    int64_t j;
    if (wa == 0.0 && wb == 0.0) return;
    if (wide)
        BLEND_LOOP(double);
    else
        BLEND_LOOP(float);
}

static inline void swap(int wide, void *a, void *b, int64_t n) {
    int64_t j;
    if (wide)
        SWAP_LOOP(double);
    else
        SWAP_LOOP(float);
}

static inline void copy(int wide, void *dst, const void *src, int64_t n) {
    if (n > 0) memcpy(dst, src, (size_t)n * (wide ? 8 : 4));
}

/* One stretch of a box row: swap a and b, copy b into a, or copy a into b, over [from, to). */
typedef struct {
    int op; /* 0 swap, 1 a <- b, 2 b <- a */
    int64_t from, to;
} Stretch;

/* Append copy `op` over [lo, hi) without [from, to) (the swapped stretch, if any) to plan[m..]. */
static int add_copy(Stretch *plan, int m, int op, int64_t lo, int64_t hi, int64_t from,
                    int64_t to) {
    if (to > from) {
        if (from > lo) plan[m++] = (Stretch){op, lo, from};
        if (hi > to) plan[m++] = (Stretch){op, to, hi};
    } else if (hi > lo) {
        plan[m++] = (Stretch){op, lo, hi};
    }
    return m;
}

/* The stretches of one row position for two boxes: where both boxes lie the samples swap;
 * elsewhere in a box the sample copies its partner, whose pixels there neither step writes
 * (the rest of b's box lies outside a's box, and the other way round). At most 5. */
static int row_plan(int in_a, int in_b, const int64_t la[3], const int64_t ha[3],
                    const int64_t lb[3], const int64_t hb[3], Stretch plan[5]) {
    int m = 0;
    int64_t from = 0, to = 0;
    if (in_a && in_b) {
        from = la[2] > lb[2] ? la[2] : lb[2];
        to = ha[2] < hb[2] ? ha[2] : hb[2];
        if (to > from) plan[m++] = (Stretch){0, from, to};
        else from = to = 0;
    }
    if (in_a) m = add_copy(plan, m, 1, la[2], ha[2], from, to);
    if (in_b) m = add_copy(plan, m, 2, lb[2], hb[2], from, to);
    return m;
}

/* Mix samples a and b. Blends cover whole samples; boxes are walked row by row (a row runs
 * along the last dimension), visiting only rows that meet a box when both samples have one. */
static void mix_pair(int wide, char *x, const Job *job, int64_t ia, int64_t ib) {
    const int64_t size = wide ? 8 : 4, s1 = job->size[1], s2 = job->size[2];
    const int64_t plane = job->size[0] * s1 * s2, sample = job->channels * plane;
    const double wa = 1.0 - job->lam[ia], wb = 1.0 - job->lam[ib];
    const int cut_a = job->cut && job->cut[ia], cut_b = job->cut && job->cut[ib];
    char *xa = x + ia * sample * size, *xb = x + ib * sample * size;
    int64_t la[3] = {0}, ha[3] = {0}, lb[3] = {0}, hb[3] = {0};
    int64_t c, z, y;
    if (!cut_a && !cut_b) {
        blend(wide, xa, xb, sample, wa, wb);
        return;
    }
    if (cut_a) box_of(job, ia, la, ha);
    if (cut_b) box_of(job, ib, lb, hb);
    if (cut_a && cut_b && !memcmp(la, lb, sizeof la) && !memcmp(ha, hb, sizeof ha)) {
        /* One box for both (batch-mode CutMix): swap the box's rows, nothing else. */
        for (c = 0; c < job->channels; c++)
            for (z = la[0]; z < ha[0]; z++)
                for (y = la[1]; y < ha[1]; y++) {
                    const int64_t at = (c * plane + (z * s1 + y) * s2 + la[2]) * size;
                    swap(wide, xa + at, xb + at, ha[2] - la[2]);
                }
        return;
    }
    if (cut_a && cut_b) {
        /* Walk the rows that meet either box, with the three kinds of row planned once. */
        const int64_t z0 = la[0] < lb[0] ? la[0] : lb[0], z1 = ha[0] > hb[0] ? ha[0] : hb[0];
        const int64_t y0 = la[1] < lb[1] ? la[1] : lb[1], y1 = ha[1] > hb[1] ? ha[1] : hb[1];
        Stretch plans[3][5]; /* rows in a's box only, in b's box only, in both */
        int counts[3], k;
        counts[0] = row_plan(1, 0, la, ha, lb, hb, plans[0]);
        counts[1] = row_plan(0, 1, la, ha, lb, hb, plans[1]);
        counts[2] = row_plan(1, 1, la, ha, lb, hb, plans[2]);
        for (z = z0; z < z1; z++) {
            /* Along y the row kind changes only at the boxes' edges: cut [y0, y1) there and run
             * each stretch of equal kind as tight loops over channels and rows. */
            const int za = z >= la[0] && z < ha[0], zb = z >= lb[0] && z < hb[0];
            int64_t edges[6] = {y0, la[1], ha[1], lb[1], hb[1], y1}, e, t;
            int i, q;
            for (i = 1; i < 6; i++) /* insertion sort of six numbers */
                for (q = i; q > 0 && edges[q - 1] > edges[q]; q--) {
                    t = edges[q];
                    edges[q] = edges[q - 1];
                    edges[q - 1] = t;
                }
            for (i = 0; i < 5; i++) {
                const int64_t from = edges[i] < y0 ? y0 : edges[i];
                const int64_t to = edges[i + 1] > y1 ? y1 : edges[i + 1];
                const int in_a = za && from >= la[1] && from < ha[1];
                const int in_b = zb && from >= lb[1] && from < hb[1];
                const int kind = in_a && in_b ? 2 : in_a ? 0 : 1;
                const Stretch *plan = plans[kind];
                const int m = in_a || in_b ? counts[kind] : 0;
                if (to <= from || !m) continue;
                for (k = 0; k < m; k++) {
                    const int64_t n = plan[k].to - plan[k].from, step = s2 * size;
                    for (c = 0; c < job->channels; c++) {
                        const int64_t at = (c * plane + (z * s1 + from) * s2 + plan[k].from) * size;
                        char *pa = xa + at, *pb = xb + at;
                        if (plan[k].op == 0)
                            for (e = from; e < to; e++, pa += step, pb += step)
                                swap(wide, pa, pb, n);
                        else if (plan[k].op == 1)
                            for (e = from; e < to; e++, pa += step, pb += step)
                                copy(wide, pa, pb, n);
                        else
                            for (e = from; e < to; e++, pa += step, pb += step)
                                copy(wide, pb, pa, n);
                    }
                }
            }
        }
        return;
    }
    /* One sample blends, the other has a box: every row of the pair changes. */
    for (c = 0; c < job->channels; c++)
        for (z = 0; z < job->size[0]; z++)
            for (y = 0; y < s1; y++) {
                const int64_t row = (c * plane + (z * s1 + y) * s2) * size;
                char *ra = xa + row, *rb = xb + row;
                const int in_a = cut_a && z >= la[0] && z < ha[0] && y >= la[1] && y < ha[1];
                const int in_b = cut_b && z >= lb[0] && z < hb[0] && y >= lb[1] && y < hb[1];
                if (cut_a) { /* b blends with all of a's row; a takes b's box stretch */
                    if (in_a) {
                        /* outside the box a keeps itself: blend b alone there, then swap-blend */
                        blend(wide, ra, rb, la[2], 0.0, wb);
                        blend(wide, ra + la[2] * size, rb + la[2] * size, ha[2] - la[2], 1.0, wb);
                        blend(wide, ra + ha[2] * size, rb + ha[2] * size, s2 - ha[2], 0.0, wb);
                    } else {
                        blend(wide, ra, rb, s2, 0.0, wb);
                    }
                } else if (in_b) {
                    blend(wide, ra, rb, lb[2], wa, 0.0);
                    blend(wide, ra + lb[2] * size, rb + lb[2] * size, hb[2] - lb[2], wa, 1.0);
                    blend(wide, ra + hb[2] * size, rb + hb[2] * size, s2 - hb[2], wa, 0.0);
                } else {
                    blend(wide, ra, rb, s2, wa, 0.0);
                }
            }
}

/* 1 when partner[] is a symmetric pairing of the batch, 0 when it is not, -1 (error set) when a
 * box of a paired sample leaves its sample. */
static int check(const Job *job) {
    int64_t i, d, j;
    for (i = 0; i < job->batch; i++) {
        j = job->partner[i];
        if (j < 0 || j >= job->batch || job->partner[j] != i) return 0;
        if (j != i && job->cut && job->cut[i]) {
            int64_t lo[3], hi[3];
            box_of(job, i, lo, hi);
            for (d = 0; d < 3; d++)
                if (lo[d] < 0 || hi[d] < lo[d] || hi[d] > job->size[d]) {
                    PyErr_Format(PyExc_ValueError,
                                 "the CutMix box of sample %lld spans [%lld, %lld) along padded "
                                 "dimension %lld of size %lld; boxes need 0 <= lo <= hi <= size",
                                 (long long)i, (long long)lo[d], (long long)hi[d], (long long)d,
                                 (long long)job->size[d]);
                    return -1;
                }
        }
    }
    return 1;
}

static void run(void *x, int is_double, const Job *job) {
    int64_t i, j;
    for (i = 0; i < job->batch; i++) {
        j = job->partner[i];
        if (j <= i) continue; /* each pair once; a sample paired with itself stays */
        mix_pair(is_double, (char *)x, job, i, j);
        if (job->target) {
            const int wide = (int)job->target_double;
            const int64_t row = job->cols * (wide ? 8 : 4);
            char *t = (char *)job->target;
            blend(wide, t + i * row, t + j * row, job->cols, 1.0 - job->lam[i], 1.0 - job->lam[j]);
        }
    }
}

static int read_int(PyObject *o, int64_t *out) {
    *out = (int64_t)PyLong_AsLongLong(o);
    return PyErr_Occurred() ? -1 : 0;
}

/*
 * mix_pairs(x, x_is_double, batch, channels, s0, s1, s2, partner, lam, cut, lo, hi, dims,
 *           target, target_is_double, cols) -> bool
 *
 * Addresses as ints: x (batch, channels, s0, s1, s2); partner int64 (batch,); lam float64
 * (batch,); cut uint8 (batch,), lo and hi int64 (batch, dims), or all three 0 for no boxes;
 * target (batch, cols) or 0. Returns False, touching nothing, when partner is not a symmetric
 * pairing of the batch (the caller then uses torch ops); raises ValueError for a bad box.
 */
static PyObject *mix_pairs(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    int64_t v[16];
    Py_ssize_t k;
    int ok;
    Job job;
    (void)self;
    if (nargs != 16) {
        PyErr_Format(PyExc_TypeError, "mix_pairs takes 16 arguments, got %zd", nargs);
        return NULL;
    }
    for (k = 0; k < 16; k++)
        if (read_int(args[k], &v[k])) return NULL;
    job.batch = v[2];
    job.channels = v[3];
    job.size[0] = v[4];
    job.size[1] = v[5];
    job.size[2] = v[6];
    job.partner = (const int64_t *)(intptr_t)v[7];
    job.lam = (const double *)(intptr_t)v[8];
    job.cut = (const uint8_t *)(intptr_t)v[9];
    job.lo = (const int64_t *)(intptr_t)v[10];
    job.hi = (const int64_t *)(intptr_t)v[11];
    job.dims = v[12];
    job.target = (void *)(intptr_t)v[13];
    job.target_double = v[14];
    job.cols = v[15];
    if (job.batch < 0 || job.channels < 1 || job.size[0] < 1 || job.size[1] < 1 ||
        job.size[2] < 1 || (job.batch && (!v[0] || !job.partner || !job.lam)) ||
        (job.cut && (!job.lo || !job.hi || job.dims < 1 || job.dims > 3)) ||
        (job.target && job.cols < 1)) {
        PyErr_SetString(PyExc_ValueError, "mix_pairs: inconsistent sizes or a missing address");
        return NULL;
    }
    ok = check(&job);
    if (ok < 0) return NULL;
    if (!ok) Py_RETURN_FALSE;
    Py_BEGIN_ALLOW_THREADS;
    run((void *)(intptr_t)v[0], (int)v[1], &job);
    Py_END_ALLOW_THREADS;
    Py_RETURN_TRUE;
}

static PyMethodDef methods[] = {
    {"mix_pairs", (PyCFunction)(void (*)(void))mix_pairs, METH_FASTCALL,
     "Mix a contiguous float32/float64 CPU batch in place through a symmetric pairing."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_kernel", "In-place pairwise MixUp/CutMix for CPU batches.", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__kernel(void) { return PyModule_Create(&module); }
