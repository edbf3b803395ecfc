/* querymeter.core._c, part two: what a meter observes of each query it has
   counted, when asked: the statement table, the sampling decision and the
   meter's observer (a callable, for the per-query exporters).
   Included by _c.c (one module, one translation unit); _py.py is the twin.

   A query is observed after its end is committed to the counters, so nothing
   here can delay or tear them.  Observing may run Python code (a cursor's
   rowcount property, fingerprinting a statement seen for the first time, a
   sample's capture), so it is not atomic with the end: a reading of the
   table may lag the meter by the queries being observed at that instant.

   The table: one entry per fingerprint, found by the exact statement text in
   a per-dialect cache, so a repeated statement costs one dict lookup and an
   update of plain C fields under the GIL.  An entry keeps calls, errors,
   exact 128-bit sums of the time and of its square (so the variance of any
   interval is exact), min, max, rows, first and last seen, and a log-linear
   histogram: values below 64 ns have a bucket each, above that every power
   of two is split into 32 buckets of equal width, so a bucket's midpoint is
   within 1/64 (1.6 %) of any value in it.  The histogram keeps a window of
   at most QM_MAX_BUCKETS buckets (20 powers of two); a value below the window
   is counted in its lowest bucket (the upper quantiles stay exact to 1.6 %).

   When the table is full, a new fingerprint evicts entries the way
   pg_stat_statements does: every entry's usage (1 per call) decays by 1 %,
   and the least used 5 % (at least one) are merged into the `evicted` row
   and dropped.  Queries counted without statement text are kept in the
   `untexted` row, so that the rows, `evicted` and `untexted` add up to the
   meter's counters. */

#define QM_SUB_BITS 5
#define QM_SUB (1 << QM_SUB_BITS)      /* buckets per power of two */
#define QM_LINEAR (2 * QM_SUB)          /* values below this have a bucket each */
#define QM_MAX_BUCKETS 640
#define QM_USAGE_DECAY 0.99
#define QM_EVICT_PERCENT 5

typedef struct {
    PyObject_HEAD
    PyObject *fingerprint;  /* str */
    PyObject *sample_sql;   /* str: the first text seen, bounded */
    uint64_t serial;        /* tells a re-created entry from an evicted one */
    int live;               /* 0 once evicted: cache hits on it are misses */
    double usage;
    uint64_t calls;
    uint64_t errors;
    qm_u128 total_ns;
    qm_u128 total_sq;       /* sum of squared times, exact */
    uint64_t min_ns;
    uint64_t max_ns;
    uint64_t rows;          /* summed over the calls whose rows were known */
    uint64_t rows_calls;    /* how many calls those were */
    int64_t first_seen;     /* wall clock ns */
    int64_t last_seen;
    int32_t lo;             /* histogram window: buckets lo .. lo + span - 1 */
    int32_t span;
    int32_t capacity;
    int wide;               /* counts are uint64_t once a uint32_t one would overflow */
    void *counts;           /* uint32_t, or uint64_t when wide */
    Py_ssize_t index;       /* in a shared table: the record, of generation `serial` */
} EntryObject;

/* Where a shared table's parts are in its file (see "the shared table"). */
typedef struct {
    size_t keys, undo, undo_usage, undo_serial, undo_key, records, size;
} qm_st_layout;

typedef struct {
    PyObject_HEAD
    PyObject *entries;      /* dict: fingerprint -> entry */
    PyObject *caches;       /* dict: dialect (str or None) -> dict: text -> entry */
    PyObject *memo_dialect; /* the last dialect looked up, and its cache */
    PyObject *memo_cache;
    PyObject *miss;         /* miss(text, dialect) -> (fingerprint, sample_sql) */
    Py_ssize_t max_statements;
    Py_ssize_t cache_limit;
    EntryObject *evicted;
    EntryObject *untexted;
    uint64_t dropped;
    uint64_t next_serial;
    PyTypeObject *entry_type;
    /* A shared table (see "the shared table" below): its mapping, else NULL. */
    char *shared;
    uint64_t shared_n;
    Py_buffer shared_view;
    int has_view;
    qm_st_layout layout;
} StatementsObject;

typedef struct {
    PyObject_HEAD
    double rate;            /* probability of capturing a query */
    int64_t threshold_ns;   /* capture every query at least this slow; -1: none */
    uint64_t rng;           /* xorshift64* state */
    PyObject *capture;      /* capture(sql, dialect, params, end_wall_ns, elapsed_ns,
                               error_type, rows) */
} SamplingObject;

/* What a shape knows of its query's statement; all borrowed, any may be NULL
   (NULL sql: counted without statement text). */
typedef struct {
    PyObject *dialect;
    PyObject *sql;
    PyObject *params;
    PyObject *rows_from;
} statement_ref;

/* ------------------------------------------------------------ histogram */

static inline int32_t
bucket_of(uint64_t value)
{
    if (value < QM_LINEAR) {
        return (int32_t)value;
    }
    int exponent = 63 - __builtin_clzll(value);
    return QM_LINEAR + (exponent - QM_SUB_BITS - 1) * QM_SUB
           + (int32_t)((value >> (exponent - QM_SUB_BITS)) & (QM_SUB - 1));
}

/* Counts are 32-bit, half the memory of a table's histograms, until one
   would overflow: then the entry's counts become 64-bit. */
static inline uint64_t
histogram_count(const EntryObject *e, int32_t i)
{
    return e->wide ? ((const uint64_t *)e->counts)[i] : ((const uint32_t *)e->counts)[i];
}

/* Puts `values` (span of them) into a new array of `capacity` counts, 32-bit
   unless `wide` or a value needs 64.  -1 when memory ran out. */
static int
histogram_store(EntryObject *e, const uint64_t *values, int32_t span, int32_t capacity, int wide)
{
    for (int32_t i = 0; i < span && !wide; i++) {
        wide = values[i] > UINT32_MAX;
    }
    void *counts = PyMem_RawCalloc((size_t)capacity, wide ? sizeof(uint64_t) : sizeof(uint32_t));
    if (counts == NULL) {
        return -1;
    }
    for (int32_t i = 0; i < span; i++) {
        if (wide) {
            ((uint64_t *)counts)[i] = values[i];
        }
        else {
            ((uint32_t *)counts)[i] = (uint32_t)values[i];
        }
    }
    PyMem_RawFree(e->counts);
    e->counts = counts;
    e->capacity = capacity;
    e->wide = wide;
    return 0;
}

/* Makes room for bucket `b` in the window; returns the index of the count
   that takes it (the lowest one when `b` is below a full window), or -1 when
   memory ran out (the value then goes unrecorded in the histogram only).
   The window grows 16 buckets at a time, to at most QM_MAX_BUCKETS. */
static Py_ssize_t
histogram_slot(EntryObject *e, int32_t b)
{
    if (e->span == 0) {
        uint64_t none = 0;
        if (histogram_store(e, &none, 1, 16, 0) < 0) {
            return -1;
        }
        e->lo = b;
        e->span = 1;
        return 0;
    }
    int32_t hi = e->lo + e->span - 1;
    if (b >= e->lo && b <= hi) {
        return b - e->lo;
    }
    int32_t new_lo = b < e->lo ? b : e->lo;
    int32_t new_hi = b > hi ? b : hi;
    if (new_hi - new_lo + 1 > QM_MAX_BUCKETS) {
        /* Keep the highest buckets; what falls below is counted lowest. */
        new_lo = new_hi - QM_MAX_BUCKETS + 1;
    }
    int32_t new_span = new_hi - new_lo + 1;
    uint64_t moved[QM_MAX_BUCKETS];
    memset(moved, 0, sizeof(moved));
    for (int32_t i = 0; i < e->span; i++) {
        int32_t bucket = e->lo + i;
        moved[bucket < new_lo ? 0 : bucket - new_lo] += histogram_count(e, i);
    }
    int32_t capacity = e->capacity;
    if (new_span > capacity) {
        capacity = (new_span + 15) & ~15;
        if (capacity > QM_MAX_BUCKETS) {
            capacity = QM_MAX_BUCKETS;
        }
    }
    if (histogram_store(e, moved, new_span, capacity, e->wide) < 0) {
        return -1;
    }
    e->lo = new_lo;
    e->span = new_span;
    return b < new_lo ? 0 : b - new_lo;
}

static inline void
histogram_add(EntryObject *e, int32_t bucket, uint64_t count)
{
    Py_ssize_t slot = histogram_slot(e, bucket);
    if (slot < 0) {
        return;
    }
    if (!e->wide) {
        uint32_t *counts = e->counts;
        if ((uint64_t)counts[slot] + count <= UINT32_MAX) {
            counts[slot] += (uint32_t)count;
            return;
        }
        uint64_t values[QM_MAX_BUCKETS];
        for (int32_t i = 0; i < e->span; i++) {
            values[i] = counts[i];
        }
        if (histogram_store(e, values, e->span, e->capacity, 1) < 0) {
            return;
        }
    }
    ((uint64_t *)e->counts)[slot] += count;
}

/* ---------------------------------------------------------------- Entry */

static EntryObject *
entry_new(PyTypeObject *type, PyObject *fingerprint, PyObject *sample_sql, uint64_t serial)
{
    EntryObject *e = PyObject_New(EntryObject, type);
    if (e == NULL) {
        return NULL;
    }
    e->fingerprint = Py_NewRef(fingerprint);
    e->sample_sql = Py_NewRef(sample_sql);
    e->serial = serial;
    e->live = 1;
    e->usage = 0.0;
    e->calls = e->errors = 0;
    e->total_ns = e->total_sq = 0;
    e->min_ns = UINT64_MAX;
    e->max_ns = 0;
    e->rows = e->rows_calls = 0;
    e->first_seen = e->last_seen = 0;
    e->lo = e->span = e->capacity = 0;
    e->wide = 0;
    e->counts = NULL;
    e->index = -1;
    return e;
}

static void
entry_dealloc(EntryObject *e)
{
    PyTypeObject *tp = Py_TYPE(e);
    Py_CLEAR(e->fingerprint);
    Py_CLEAR(e->sample_sql);
    PyMem_RawFree(e->counts);
    PyObject_Free(e);
    Py_DECREF(tp);
}

/* `times` queries alike (1 but in tests): plain C, no Python, so it is
   atomic under the GIL. */
static inline void
entry_add(EntryObject *e, uint64_t elapsed, int error, int64_t rows, int64_t wall,
          uint64_t times)
{
    if (e->calls == 0) {
        e->first_seen = wall;
    }
    e->calls += times;
    if (error) {
        e->errors += times;
    }
    e->total_ns += (qm_u128)elapsed * times;
    e->total_sq += (qm_u128)elapsed * elapsed * times;
    if (elapsed < e->min_ns) {
        e->min_ns = elapsed;
    }
    if (elapsed > e->max_ns) {
        e->max_ns = elapsed;
    }
    if (rows >= 0) {
        e->rows += (uint64_t)rows * times;
        e->rows_calls += times;
    }
    if (wall > e->last_seen) {
        e->last_seen = wall;
    }
    e->usage += (double)times;
    histogram_add(e, bucket_of(elapsed), times);
}

static void
entry_merge(EntryObject *into, EntryObject *from)
{
    if (from->calls == 0) {
        return;
    }
    if (into->calls == 0 || from->first_seen < into->first_seen) {
        into->first_seen = from->first_seen;
    }
    if (from->last_seen > into->last_seen) {
        into->last_seen = from->last_seen;
    }
    into->calls += from->calls;
    into->errors += from->errors;
    into->total_ns += from->total_ns;
    into->total_sq += from->total_sq;
    if (from->min_ns < into->min_ns) {
        into->min_ns = from->min_ns;
    }
    if (from->max_ns > into->max_ns) {
        into->max_ns = from->max_ns;
    }
    into->rows += from->rows;
    into->rows_calls += from->rows_calls;
    /* From the highest bucket down, so the window settles at once. */
    for (int32_t i = from->span - 1; i >= 0; i--) {
        uint64_t count = histogram_count(from, i);
        if (count != 0) {
            histogram_add(into, from->lo + i, count);
        }
    }
}

static PyType_Slot entry_slots[] = {
    {Py_tp_doc, (void *)PyDoc_STR("One statement's figures (internal).")},
    {Py_tp_dealloc, (void *)entry_dealloc},
    {0, NULL},
};

static PyType_Spec entry_spec = {
    .name = "querymeter.core._c.StatementEntry",
    .basicsize = sizeof(EntryObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = entry_slots,
};

/* ----------------------------------------------------------- Statements */

static int
usage_order(const void *a, const void *b)
{
    const EntryObject *x = *(EntryObject *const *)a;
    const EntryObject *y = *(EntryObject *const *)b;
    if (x->usage != y->usage) {
        return x->usage < y->usage ? -1 : 1;
    }
    /* Equal usage: the older entry goes first. */
    return x->serial < y->serial ? -1 : (x->serial > y->serial ? 1 : 0);
}

/* Makes room for one entry.  Plain C but for dict deletions, which run no
   Python code (entries and their keys are ours).  -1 on memory error. */
static int
statements_evict(StatementsObject *t)
{
    Py_ssize_t n = PyDict_GET_SIZE(t->entries);
    if (n == 0) {
        return 0;
    }
    EntryObject **all = PyMem_Malloc((size_t)n * sizeof(EntryObject *));
    if (all == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t pos = 0, i = 0;
    PyObject *key, *value;
    while (PyDict_Next(t->entries, &pos, &key, &value) && i < n) {
        EntryObject *e = (EntryObject *)value;
        e->usage *= QM_USAGE_DECAY;
        all[i++] = e;
    }
    qsort(all, (size_t)i, sizeof(EntryObject *), usage_order);
    Py_ssize_t drop = t->max_statements * QM_EVICT_PERCENT / 100;
    if (drop < 1) {
        drop = 1;
    }
    if (drop > i) {
        drop = i;
    }
    int status = 0;
    for (Py_ssize_t k = 0; k < drop; k++) {
        EntryObject *e = all[k];
        entry_merge(t->evicted, e);
        e->live = 0;
        t->dropped += 1;
        /* The entry may go with its key: nothing of it is touched after. */
        if (PyDict_DelItem(t->entries, e->fingerprint) < 0) {
            status = -1;
            break;
        }
    }
    PyMem_Free(all);
    return status;
}

/* The text -> entry cache of a dialect (borrowed), made on first use. */
static PyObject *
statements_cache(StatementsObject *t, PyObject *dialect)
{
    if (dialect == t->memo_dialect && t->memo_cache != NULL) {
        return t->memo_cache;
    }
    PyObject *cache = PyDict_GetItemWithError(t->caches, dialect);
    if (cache == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        cache = PyDict_New();
        if (cache == NULL) {
            return NULL;
        }
        int status = PyDict_SetItem(t->caches, dialect, cache);
        Py_DECREF(cache);
        if (status < 0) {
            return NULL;
        }
    }
    Py_XSETREF(t->memo_dialect, Py_NewRef(dialect));
    Py_XSETREF(t->memo_cache, Py_NewRef(cache));
    return cache;
}

/* A full cache drops its oldest quarter (dicts keep insertion order). */
static int
statements_trim_cache(PyObject *cache, Py_ssize_t limit)
{
    Py_ssize_t drop = limit / 4 + 1;
    PyObject *keys = PyList_New(0);
    if (keys == NULL) {
        return -1;
    }
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyList_GET_SIZE(keys) < drop && PyDict_Next(cache, &pos, &key, &value)) {
        if (PyList_Append(keys, key) < 0) {
            Py_DECREF(keys);
            return -1;
        }
    }
    int status = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(keys); i++) {
        if (PyDict_DelItem(cache, PyList_GET_ITEM(keys, i)) < 0) {
            status = -1;
            break;
        }
    }
    Py_DECREF(keys);
    return status;
}

/* A text not in the cache: fingerprinted (Python), then its entry found or
   made.  Returns a new reference, or NULL with an exception set. */
static EntryObject *
statements_miss(StatementsObject *t, PyObject *dialect, PyObject *sql, PyObject *cache)
{
    PyObject *found = PyObject_CallFunctionObjArgs(t->miss, sql, dialect, NULL);
    if (found == NULL) {
        return NULL;
    }
    if (!PyTuple_CheckExact(found) || PyTuple_GET_SIZE(found) != 2
        || !PyUnicode_CheckExact(PyTuple_GET_ITEM(found, 0))
        || !PyUnicode_CheckExact(PyTuple_GET_ITEM(found, 1))) {
        Py_DECREF(found);
        PyErr_SetString(PyExc_TypeError, "the miss function must return (fingerprint, sample_sql)");
        return NULL;
    }
    PyObject *fingerprint = PyTuple_GET_ITEM(found, 0);
    EntryObject *entry = (EntryObject *)PyDict_GetItemWithError(t->entries, fingerprint);
    if (entry != NULL) {
        Py_INCREF(entry);
    }
    else {
        if (PyErr_Occurred()) {
            Py_DECREF(found);
            return NULL;
        }
        if (PyDict_GET_SIZE(t->entries) >= t->max_statements && statements_evict(t) < 0) {
            Py_DECREF(found);
            return NULL;
        }
        entry = entry_new(t->entry_type, fingerprint, PyTuple_GET_ITEM(found, 1), t->next_serial++);
        if (entry == NULL || PyDict_SetItem(t->entries, fingerprint, (PyObject *)entry) < 0) {
            Py_XDECREF(entry);
            Py_DECREF(found);
            return NULL;
        }
    }
    Py_DECREF(found);
    if (cache != NULL) {
        if (PyDict_GET_SIZE(cache) >= t->cache_limit && statements_trim_cache(cache, t->cache_limit) < 0) {
            Py_DECREF(entry);
            return NULL;
        }
        if (PyDict_SetItem(cache, sql, (PyObject *)entry) < 0) {
            Py_DECREF(entry);
            return NULL;
        }
    }
    return entry;
}

/* ------------------------------------------------------ the shared table

   A statement table many processes share (a SharedMeter's): its figures
   live in a file every process maps, laid out exactly as the Python twin
   lays it out (querymeter/shared/_statements.py makes and checks the file):

     header (4096 bytes) | keys[N] | undo area | records[N + 2]

   records[N] is `evicted`, records[N + 1] `untexted`.  keys[i] is record
   i's 64-bit key (BLAKE2b of its fingerprint), 0 when free: a fingerprint
   not in this process's cache is found by a scan of that one compact array.
   A record's serial is its generation: each process caches, per text, the
   record's index and serial, and a cached serial that no longer matches
   (the record was evicted, by any process) is a miss.

   One lock guards the table: a word in the header that the holder sets to
   its token (pid << 32 | low bits of the process's start time) with a
   compare-and-swap.  A waiter that has spun a while checks the holder:
   gone, a zombie, or its pid reused by a younger process, the holder is
   dead and the waiter takes the lock over.  Before changing anything the
   holder writes what it will change into the undo area (and the kind of
   change into the header), so that whoever takes the lock next, from a
   holder killed mid-update, first puts the table back as it was before
   that update: the figures are never torn, and a dead process's last
   query is lost whole or kept whole.  The pure-Python core uses an fcntl
   lock instead of the word (the kernel releases it at death) and the
   same undo area; a file records which lock its processes use. */

#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <errno.h>
#include <pthread.h>

#define QM_ST_MAGIC "QMSTMTS1"
#define QM_ST_VERSION 1
#define QM_ST_HEADER 4096
#define QM_ST_FINGERPRINT_BYTES 1024
#define QM_ST_SAMPLE_BYTES 1024
#define QM_ST_LOCK_ATOMIC 1
#define QM_ST_LOCK_FCNTL 2
#define QM_ST_UNDO_NONE 0
#define QM_ST_UNDO_RECORD 1
#define QM_ST_UNDO_INSERT 2
#define QM_ST_UNDO_EVICT 3
#define QM_ST_UNDO_BUCKET 4  /* an update within the window: the head and one count */

typedef struct {
    char magic[8];
    uint32_t version;
    uint32_t lock_kind;
    uint64_t max_statements;
    uint64_t record_size;
    uint64_t lock;              /* accessed atomically only */
    uint64_t table_id;
    int64_t started_wall_ns;
    uint64_t dropped;
    uint64_t next_serial;
    uint64_t live;
    uint64_t undo_kind;         /* what the holder is changing: QM_UNDO_* */
    uint64_t undo_index;        /* which record */
    uint64_t undo_dropped;      /* the header as it was before */
    uint64_t undo_next_serial;
    uint64_t undo_live;
    uint64_t undo_slot;         /* QM_ST_UNDO_BUCKET: the count changed */
} qm_st_header;

/* The figures of a record, before its texts and histogram. */
typedef struct {
    uint64_t serial;            /* 0: free */
    uint64_t key;
    double usage;
    uint64_t calls;
    uint64_t errors;
    uint64_t total_lo, total_hi;  /* 128-bit sums, as two words: the records */
    uint64_t sq_lo, sq_hi;        /* are 8-byte aligned only */
    uint64_t min_ns;
    uint64_t max_ns;
    uint64_t rows;
    uint64_t rows_calls;
    int64_t first_seen;
    int64_t last_seen;
    int32_t lo;
    int32_t span;
    uint32_t fingerprint_len;
    uint32_t sample_len;
} qm_st_head;

typedef struct {
    qm_st_head h;
    char fingerprint[QM_ST_FINGERPRINT_BYTES];
    char sample[QM_ST_SAMPLE_BYTES];
    uint64_t counts[QM_MAX_BUCKETS];
} qm_st_record;

_Static_assert(sizeof(qm_st_header) == 128, "the shared header's layout");
_Static_assert(sizeof(qm_st_head) == 136, "the shared record's layout");
_Static_assert(sizeof(qm_st_record) == 136 + 2048 + 8 * QM_MAX_BUCKETS, "the shared record");

static inline size_t
qm_st_align(size_t value, size_t to)
{
    return (value + to - 1) / to * to;
}

static qm_st_layout
st_layout(uint64_t n)
{
    qm_st_layout l;
    l.keys = QM_ST_HEADER;
    l.undo = qm_st_align(l.keys + 8 * n, 64);
    l.undo_usage = l.undo + sizeof(qm_st_record);
    l.undo_serial = l.undo_usage + 8 * n;
    l.undo_key = l.undo_serial + 8 * n;
    l.records = qm_st_align(l.undo_key + 8 * n, 4096);
    l.size = l.records + (n + 2) * sizeof(qm_st_record);
    return l;
}

#define ST_HEADER(t) ((qm_st_header *)(t)->shared)
#define ST_KEYS(t) ((uint64_t *)((t)->shared + (t)->layout.keys))
#define ST_RECORD(t, i) ((qm_st_record *)((t)->shared + (t)->layout.records) + (i))
#define ST_UNDO(t) ((qm_st_record *)((t)->shared + (t)->layout.undo))

/* A compiler barrier: stores before it are made before stores after it, so
   that a holder killed at any instruction leaves its undo record complete
   before the change it undoes begins. */
#define QM_ST_ORDER() atomic_signal_fence(memory_order_seq_cst)

/* ---- the lock */

static uint64_t qm_st_token = 0;  /* this process's; 0 after fork: made anew */
static int qm_st_atfork = 0;

static void
qm_st_forked(void)
{
    qm_st_token = 0;
}

/* A process's start time (clock ticks since boot, field 22 of its stat),
   and whether it is a zombie; -1 when it does not exist. */
static long long
st_process_start(pid_t pid, int *zombie)
{
    char path[64], buffer[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        return -1;
    }
    size_t n = fread(buffer, 1, sizeof(buffer) - 1, f);
    fclose(f);
    buffer[n] = '\0';
    /* The command name may hold spaces and parentheses: fields follow the last ')'. */
    char *p = strrchr(buffer, ')');
    if (p == NULL || p[1] == '\0') {
        return -1;
    }
    p += 2;
    *zombie = *p == 'Z' || *p == 'X';
    /* p is field 3 (state); the start time is field 22. */
    for (int field = 3; field < 22; field++) {
        p = strchr(p, ' ');
        if (p == NULL) {
            return -1;
        }
        p++;
    }
    return strtoll(p, NULL, 10);
}

static uint64_t
st_lock_token(void)
{
    if (qm_st_token == 0) {
        if (!qm_st_atfork) {
            pthread_atfork(NULL, NULL, qm_st_forked);
            qm_st_atfork = 1;
        }
        pid_t pid = getpid();
        int zombie = 0;
        long long start = st_process_start(pid, &zombie);
        qm_st_token = ((uint64_t)(uint32_t)pid << 32) | (uint32_t)(start < 0 ? 0 : start);
    }
    return qm_st_token;
}

/* Whether the process that holds a lock with this token is gone. */
static int
st_holder_dead(uint64_t token)
{
    if (token == st_lock_token()) {
        return 1;  /* ours, yet we are waiting: left by this process's past */
    }
    pid_t pid = (pid_t)(token >> 32);
    if (pid <= 0) {
        return 1;
    }
    if (kill(pid, 0) < 0 && errno == ESRCH) {
        return 1;
    }
    int zombie = 0;
    long long start = st_process_start(pid, &zombie);
    if (start < 0) {
        return 1;
    }
    return zombie || (uint32_t)start != (uint32_t)token;
}

static void st_repair(StatementsObject *t);

static void
st_lock(StatementsObject *t)
{
    _Atomic uint64_t *word = (_Atomic uint64_t *)&ST_HEADER(t)->lock;
    uint64_t me = st_lock_token();
    for (uint64_t spins = 1;; spins++) {
        uint64_t expected = 0;
        if (atomic_compare_exchange_weak_explicit(word, &expected, me, memory_order_acquire,
                                                  memory_order_relaxed)) {
            break;
        }
        if (spins % 64 == 0) {
            sched_yield();
        }
        if (spins % 4096 == 0 && expected != 0 && st_holder_dead(expected)
            && atomic_compare_exchange_strong_explicit(word, &expected, me, memory_order_acquire,
                                                       memory_order_relaxed)) {
            break;  /* taken over from a dead holder */
        }
    }
    if (ST_HEADER(t)->undo_kind != QM_ST_UNDO_NONE) {
        st_repair(t);
    }
}

static inline void
st_unlock(StatementsObject *t)
{
    atomic_store_explicit((_Atomic uint64_t *)&ST_HEADER(t)->lock, 0, memory_order_release);
}

/* ---- undo */

/* Saves a record's figures and histogram (not its texts, which no update
   changes) before an update. */
static void
st_undo_save_record(StatementsObject *t, uint64_t index)
{
    qm_st_record *undo = ST_UNDO(t), *r = ST_RECORD(t, index);
    undo->h = r->h;
    /* Counts beyond the window are zero: the window's are all there is. */
    int32_t span = r->h.span < 0 ? 0 : (r->h.span > QM_MAX_BUCKETS ? QM_MAX_BUCKETS : r->h.span);
    memcpy(undo->counts, r->counts, (size_t)span * sizeof(uint64_t));
    ST_HEADER(t)->undo_index = index;
}

/* Saves the header's counts before an insert or an eviction. */
static void
st_undo_save_header(StatementsObject *t)
{
    qm_st_header *h = ST_HEADER(t);
    h->undo_dropped = h->dropped;
    h->undo_next_serial = h->next_serial;
    h->undo_live = h->live;
}

static inline void
st_undo_begin(StatementsObject *t, uint64_t kind)
{
    QM_ST_ORDER();
    ST_HEADER(t)->undo_kind = kind;
    QM_ST_ORDER();
}

static inline void
st_undo_end(StatementsObject *t)
{
    QM_ST_ORDER();
    ST_HEADER(t)->undo_kind = QM_ST_UNDO_NONE;
    QM_ST_ORDER();
}

static void
st_undo_restore_record(StatementsObject *t, qm_st_record *r)
{
    qm_st_record *undo = ST_UNDO(t);
    int32_t span = undo->h.span < 0 ? 0 : (undo->h.span > QM_MAX_BUCKETS ? QM_MAX_BUCKETS : undo->h.span);
    r->h = undo->h;
    memcpy(r->counts, undo->counts, (size_t)span * sizeof(uint64_t));
    memset(r->counts + span, 0, (size_t)(QM_MAX_BUCKETS - span) * sizeof(uint64_t));
}

/* Puts back what a dead holder was changing. */
static void
st_repair(StatementsObject *t)
{
    qm_st_header *h = ST_HEADER(t);
    uint64_t n = t->shared_n;
    uint64_t index = h->undo_index;
    uint64_t kind = h->undo_kind;
    switch (kind) {
    case QM_ST_UNDO_BUCKET:
        if (index < n + 2 && h->undo_slot < QM_MAX_BUCKETS) {
            qm_st_record *r = ST_RECORD(t, index);
            r->h = ST_UNDO(t)->h;
            r->counts[h->undo_slot] = ST_UNDO(t)->counts[0];
        }
        break;
    case QM_ST_UNDO_RECORD:
        if (index < n + 2) {
            st_undo_restore_record(t, ST_RECORD(t, index));
        }
        break;
    case QM_ST_UNDO_INSERT:
        if (index < n) {
            ST_RECORD(t, index)->h.serial = 0;
            ST_RECORD(t, index)->h.key = 0;
            ST_KEYS(t)[index] = 0;
        }
        break;
    case QM_ST_UNDO_EVICT: {
        st_undo_restore_record(t, ST_RECORD(t, n));
        const double *usage = (const double *)(t->shared + t->layout.undo_usage);
        const uint64_t *serial = (const uint64_t *)(t->shared + t->layout.undo_serial);
        const uint64_t *key = (const uint64_t *)(t->shared + t->layout.undo_key);
        for (uint64_t i = 0; i < n; i++) {
            qm_st_record *r = ST_RECORD(t, i);
            r->h.usage = usage[i];
            r->h.serial = serial[i];
            r->h.key = key[i];
            ST_KEYS(t)[i] = key[i];
        }
        break;
    }
    default:
        break;
    }
    if (kind == QM_ST_UNDO_INSERT || kind == QM_ST_UNDO_EVICT) {
        h->dropped = h->undo_dropped;
        h->next_serial = h->undo_next_serial;
        h->live = h->undo_live;
    }
    st_undo_end(t);
}

/* ---- figures */

static inline qm_u128
st_u128_of(uint64_t lo, uint64_t hi)
{
    return ((qm_u128)hi << 64) | lo;
}

/* The count that takes bucket `b`: the window [lo, lo + span) moves and
   grows as an in-process entry's does (at most QM_MAX_BUCKETS, the highest
   kept, what falls below counted lowest), in the record's fixed room. */
static int32_t
st_slot(qm_st_record *r, int32_t b)
{
    if (r->h.span == 0) {
        r->h.lo = b;
        r->h.span = 1;
        return 0;
    }
    int32_t lo = r->h.lo, hi = lo + r->h.span - 1;
    if (b >= lo && b <= hi) {
        return b - lo;
    }
    int32_t new_lo = b < lo ? b : lo;
    int32_t new_hi = b > hi ? b : hi;
    if (new_hi - new_lo + 1 > QM_MAX_BUCKETS) {
        new_lo = new_hi - QM_MAX_BUCKETS + 1;
    }
    uint64_t moved[QM_MAX_BUCKETS];
    memset(moved, 0, sizeof(moved));
    for (int32_t i = 0; i < r->h.span; i++) {
        int32_t bucket = lo + i;
        moved[bucket < new_lo ? 0 : bucket - new_lo] += r->counts[i];
    }
    memcpy(r->counts, moved, sizeof(moved));
    r->h.lo = new_lo;
    r->h.span = new_hi - new_lo + 1;
    return b < new_lo ? 0 : b - new_lo;
}

static void
st_add(qm_st_record *r, uint64_t elapsed, int error, int64_t rows, int64_t wall,
           uint64_t times)
{
    qm_st_head *h = &r->h;
    if (h->calls == 0) {
        h->first_seen = wall;
    }
    h->calls += times;
    if (error) {
        h->errors += times;
    }
    qm_u128 total = st_u128_of(h->total_lo, h->total_hi) + (qm_u128)elapsed * times;
    qm_u128 sq = st_u128_of(h->sq_lo, h->sq_hi) + (qm_u128)elapsed * elapsed * times;
    h->total_lo = (uint64_t)total;
    h->total_hi = (uint64_t)(total >> 64);
    h->sq_lo = (uint64_t)sq;
    h->sq_hi = (uint64_t)(sq >> 64);
    if (elapsed < h->min_ns) {
        h->min_ns = elapsed;
    }
    if (elapsed > h->max_ns) {
        h->max_ns = elapsed;
    }
    if (rows >= 0) {
        h->rows += (uint64_t)rows * times;
        h->rows_calls += times;
    }
    if (wall > h->last_seen) {
        h->last_seen = wall;
    }
    h->usage += (double)times;
    r->counts[st_slot(r, bucket_of(elapsed))] += times;
}

static void
st_merge(qm_st_record *into, const qm_st_record *from)
{
    const qm_st_head *f = &from->h;
    qm_st_head *h = &into->h;
    if (f->calls == 0) {
        return;
    }
    if (h->calls == 0 || f->first_seen < h->first_seen) {
        h->first_seen = f->first_seen;
    }
    if (f->last_seen > h->last_seen) {
        h->last_seen = f->last_seen;
    }
    h->calls += f->calls;
    h->errors += f->errors;
    qm_u128 total = st_u128_of(h->total_lo, h->total_hi) + st_u128_of(f->total_lo, f->total_hi);
    qm_u128 sq = st_u128_of(h->sq_lo, h->sq_hi) + st_u128_of(f->sq_lo, f->sq_hi);
    h->total_lo = (uint64_t)total;
    h->total_hi = (uint64_t)(total >> 64);
    h->sq_lo = (uint64_t)sq;
    h->sq_hi = (uint64_t)(sq >> 64);
    if (f->min_ns < h->min_ns) {
        h->min_ns = f->min_ns;
    }
    if (f->max_ns > h->max_ns) {
        h->max_ns = f->max_ns;
    }
    h->rows += f->rows;
    h->rows_calls += f->rows_calls;
    for (int32_t i = f->span - 1; i >= 0; i--) {
        uint64_t count = from->counts[i];
        if (count != 0) {
            into->counts[st_slot(into, f->lo + i)] += count;
        }
    }
}

/* A record made new.  Counts beyond the window are zero already: the
   window's are zeroed first, then the head (a holder killed in between
   leaves the old window to zero again), so that pages of the file that were
   never written stay unwritten (on tmpfs: no memory). */
static void
st_clear(qm_st_record *r)
{
    int32_t span = r->h.span < 0 ? 0 : (r->h.span > QM_MAX_BUCKETS ? QM_MAX_BUCKETS : r->h.span);
    memset(r->counts, 0, (size_t)span * sizeof(uint64_t));
    QM_ST_ORDER();
    memset(&r->h, 0, sizeof(r->h));
    r->h.min_ns = UINT64_MAX;
}

/* An update of one record, undoable: within the window (nearly always), the
   head and the one count it changes are saved; else the whole window. */
static void
st_update(StatementsObject *t, uint64_t index, uint64_t elapsed, int error, int64_t rows,
              int64_t wall, uint64_t times)
{
    qm_st_record *r = ST_RECORD(t, index);
    int32_t bucket = bucket_of(elapsed);
    if (r->h.span > 0 && bucket >= r->h.lo && bucket - r->h.lo < r->h.span) {
        qm_st_record *undo = ST_UNDO(t);
        qm_st_header *h = ST_HEADER(t);
        int32_t slot = bucket - r->h.lo;
        undo->h = r->h;
        undo->counts[0] = r->counts[slot];
        h->undo_index = index;
        h->undo_slot = (uint64_t)slot;
        st_undo_begin(t, QM_ST_UNDO_BUCKET);
    }
    else {
        st_undo_save_record(t, index);
        st_undo_begin(t, QM_ST_UNDO_RECORD);
    }
    st_add(r, elapsed, error, rows, wall, times);
    st_undo_end(t);
}

typedef struct {
    double usage;
    uint64_t serial;
    uint64_t index;
} qm_st_victim;

static int
st_victim_order(const void *a, const void *b)
{
    const qm_st_victim *x = a, *y = b;
    if (x->usage != y->usage) {
        return x->usage < y->usage ? -1 : 1;
    }
    return x->serial < y->serial ? -1 : (x->serial > y->serial ? 1 : 0);
}

/* Makes room, as the in-process table does: every usage decays by 1 %, the
   least used 5 % go into `evicted`.  -1 when memory ran out (nothing changed). */
static int
st_evict(StatementsObject *t)
{
    uint64_t n = t->shared_n;
    qm_st_header *h = ST_HEADER(t);
    qm_st_victim *all = PyMem_RawMalloc((size_t)n * sizeof(qm_st_victim));
    if (all == NULL) {
        return -1;
    }
    double *usage = (double *)(t->shared + t->layout.undo_usage);
    uint64_t *serial = (uint64_t *)(t->shared + t->layout.undo_serial);
    uint64_t *key = (uint64_t *)(t->shared + t->layout.undo_key);
    for (uint64_t i = 0; i < n; i++) {
        qm_st_record *r = ST_RECORD(t, i);
        usage[i] = r->h.usage;
        serial[i] = r->h.serial;
        key[i] = r->h.key;
    }
    st_undo_save_record(t, n);
    st_undo_save_header(t);
    st_undo_begin(t, QM_ST_UNDO_EVICT);
    size_t live = 0;
    for (uint64_t i = 0; i < n; i++) {
        qm_st_record *r = ST_RECORD(t, i);
        if (r->h.serial != 0) {
            r->h.usage *= QM_USAGE_DECAY;
            all[live].usage = r->h.usage;
            all[live].serial = r->h.serial;
            all[live].index = i;
            live++;
        }
    }
    qsort(all, live, sizeof(qm_st_victim), st_victim_order);
    size_t drop = (size_t)(t->max_statements * QM_EVICT_PERCENT / 100);
    if (drop < 1) {
        drop = 1;
    }
    if (drop > live) {
        drop = live;
    }
    for (size_t k = 0; k < drop; k++) {
        qm_st_record *r = ST_RECORD(t, all[k].index);
        st_merge(ST_RECORD(t, n), r);
        r->h.serial = 0;
        r->h.key = 0;
        ST_KEYS(t)[all[k].index] = 0;
        h->dropped += 1;
        h->live -= 1;
    }
    st_undo_end(t);
    PyMem_RawFree(all);
    return 0;
}

/* The index of the live record with this key, or of a new one made for it
   (evicting first when the table is full); -1 when memory ran out.  Caller
   holds the lock. */
static int64_t
st_find_or_insert(StatementsObject *t, uint64_t key, const char *fingerprint,
                      Py_ssize_t fingerprint_len, const char *sample, Py_ssize_t sample_len)
{
    uint64_t n = t->shared_n;
    uint64_t *keys = ST_KEYS(t);
    for (uint64_t i = 0; i < n; i++) {
        if (keys[i] == key) {
            return (int64_t)i;
        }
    }
    qm_st_header *h = ST_HEADER(t);
    if (h->live >= (uint64_t)t->max_statements && st_evict(t) < 0) {
        return -1;
    }
    uint64_t index = n;
    for (uint64_t i = 0; i < n; i++) {
        if (keys[i] == 0) {
            index = i;
            break;
        }
    }
    if (index == n) {
        return -1;  /* cannot be: eviction freed one */
    }
    qm_st_record *r = ST_RECORD(t, index);
    h->undo_index = index;
    st_undo_save_header(t);
    st_undo_begin(t, QM_ST_UNDO_INSERT);
    st_clear(r);
    r->h.key = key;
    r->h.fingerprint_len = (uint32_t)fingerprint_len;
    r->h.sample_len = (uint32_t)sample_len;
    memcpy(r->fingerprint, fingerprint, (size_t)fingerprint_len);
    memcpy(r->sample, sample, (size_t)sample_len);
    r->h.serial = h->next_serial++;
    h->live += 1;
    QM_ST_ORDER();
    keys[index] = key;
    st_undo_end(t);
    return (int64_t)index;
}

/* A text this process has not cached (or whose record was evicted): the
   miss function names it (fingerprint, sample, key, and their stored
   bytes), then its record is found or made; the text is cached with the
   record's index and serial.  0, or -1 with an exception set (the query is
   then counted in `untexted` by the caller). */
static int
st_miss(StatementsObject *t, PyObject *dialect, PyObject *sql, PyObject *cache,
            uint64_t elapsed, int error, int64_t rows, int64_t wall, uint64_t times)
{
    PyObject *found = PyObject_CallFunctionObjArgs(t->miss, sql, dialect, NULL);
    if (found == NULL) {
        return -1;
    }
    unsigned long long key = 0;
    int valid = PyTuple_CheckExact(found) && PyTuple_GET_SIZE(found) == 5
                && PyUnicode_CheckExact(PyTuple_GET_ITEM(found, 0))
                && PyUnicode_CheckExact(PyTuple_GET_ITEM(found, 1))
                && PyLong_CheckExact(PyTuple_GET_ITEM(found, 2))
                && PyBytes_CheckExact(PyTuple_GET_ITEM(found, 3))
                && PyBytes_CheckExact(PyTuple_GET_ITEM(found, 4))
                && PyBytes_GET_SIZE(PyTuple_GET_ITEM(found, 3)) <= QM_ST_FINGERPRINT_BYTES
                && PyBytes_GET_SIZE(PyTuple_GET_ITEM(found, 4)) <= QM_ST_SAMPLE_BYTES;
    if (valid) {
        key = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(found, 2));
        if (PyErr_Occurred()) {
            PyErr_Clear();
            valid = 0;
        }
        valid = valid && key != 0;
    }
    if (!valid) {
        Py_DECREF(found);
        PyErr_SetString(PyExc_TypeError,
                        "the shared miss function must return (fingerprint, sample_sql, "
                        "key, fingerprint_bytes, sample_bytes)");
        return -1;
    }
    PyObject *fingerprint_bytes = PyTuple_GET_ITEM(found, 3);
    PyObject *sample_bytes = PyTuple_GET_ITEM(found, 4);
    st_lock(t);
    int64_t index = st_find_or_insert(
        t, key, PyBytes_AS_STRING(fingerprint_bytes), PyBytes_GET_SIZE(fingerprint_bytes),
        PyBytes_AS_STRING(sample_bytes), PyBytes_GET_SIZE(sample_bytes));
    uint64_t serial = 0;
    if (index >= 0) {
        serial = ST_RECORD(t, index)->h.serial;
        st_update(t, (uint64_t)index, elapsed, error, rows, wall, times);
    }
    st_unlock(t);
    if (index < 0) {
        Py_DECREF(found);
        PyErr_NoMemory();
        return -1;
    }
    int status = 0;
    if (cache != NULL) {
        EntryObject *entry = entry_new(t->entry_type, PyTuple_GET_ITEM(found, 0),
                                       PyTuple_GET_ITEM(found, 1), serial);
        if (entry == NULL) {
            status = -1;
        }
        else {
            entry->index = index;
            if ((PyDict_GET_SIZE(cache) >= t->cache_limit
                 && statements_trim_cache(cache, t->cache_limit) < 0)
                || PyDict_SetItem(cache, sql, (PyObject *)entry) < 0) {
                /* Counted already: only the cache is the poorer. */
                PyErr_Clear();
            }
            Py_DECREF(entry);
        }
        if (status < 0) {
            PyErr_Clear();
            status = 0;
        }
    }
    Py_DECREF(found);
    return status;
}

/* Records one query into the shared table (as statements_record does into
   the process's own).  A cache hit is one dict lookup and an update under
   the lock. */
static int
st_record(StatementsObject *t, PyObject *dialect, PyObject *sql, uint64_t elapsed, int error,
              int64_t rows, int64_t wall, uint64_t times)
{
    if (sql == NULL || sql == Py_None) {
        st_lock(t);
        st_update(t, t->shared_n + 1, elapsed, error, rows, wall, times);
        st_unlock(t);
        return 0;
    }
    if (dialect == NULL) {
        dialect = Py_None;
    }
    PyObject *cache = NULL;
    if (PyUnicode_CheckExact(sql) || PyBytes_CheckExact(sql)) {
        cache = statements_cache(t, dialect);
        if (cache != NULL) {
            EntryObject *hit = (EntryObject *)PyDict_GetItemWithError(cache, sql);
            if (hit != NULL) {
                st_lock(t);
                if (ST_RECORD(t, hit->index)->h.serial == hit->serial) {
                    st_update(t, (uint64_t)hit->index, elapsed, error, rows, wall, times);
                    st_unlock(t);
                    return 0;
                }
                st_unlock(t);
                /* Evicted (by any process) since it was cached. */
                if (PyDict_DelItem(cache, sql) < 0) {
                    cache = NULL;
                }
            }
        }
        if (PyErr_Occurred()) {
            goto failed;
        }
    }
    Py_INCREF(sql);
    Py_INCREF(dialect);
    int status = st_miss(t, dialect, sql, cache, elapsed, error, rows, wall, times);
    Py_DECREF(dialect);
    Py_DECREF(sql);
    if (status == 0) {
        return 0;
    }
failed:
    st_lock(t);
    st_update(t, t->shared_n + 1, elapsed, error, rows, wall, times);
    st_unlock(t);
    if (!PyErr_ExceptionMatches(PyExc_Exception)) {
        return -1;
    }
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    int faulted = report_fault("could not record a statement", value);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    return faulted;
}

/* _read() of a shared table: every live record copied under the lock (plain
   copies into one buffer, no Python), then made into objects. */
typedef struct {
    qm_st_head h;
    size_t counts;      /* offsets into the copy's buffer */
    size_t fingerprint;
    size_t sample;
} qm_st_copy;

static PyObject *
st_row(StatementsObject *t, const qm_st_copy *c, const char *buffer, PyObject *fingerprint,
           PyObject *sample)
{
    const qm_st_head *h = &c->h;
    int32_t span = h->span < 0 ? 0 : (h->span > QM_MAX_BUCKETS ? QM_MAX_BUCKETS : h->span);
    PyObject *counts = PyBytes_FromStringAndSize(buffer + c->counts,
                                                 (Py_ssize_t)span * (Py_ssize_t)sizeof(uint64_t));
    PyObject *total = u128_to_pylong(st_u128_of(h->total_lo, h->total_hi));
    PyObject *total_sq = u128_to_pylong(st_u128_of(h->sq_lo, h->sq_hi));
    PyObject *texts[2] = {fingerprint, sample};
    if (fingerprint == NULL) {
        texts[0] = PyUnicode_DecodeUTF8(buffer + c->fingerprint, h->fingerprint_len,
                                        "surrogatepass");
        texts[1] = PyUnicode_DecodeUTF8(buffer + c->sample, h->sample_len, "surrogatepass");
    }
    else {
        Py_INCREF(texts[0]);
        Py_INCREF(texts[1]);
    }
    PyObject *row = NULL;
    if (counts && total && total_sq && texts[0] && texts[1]) {
        row = Py_BuildValue("(OOKKKOOKKKKLLiO)", texts[0], texts[1],
                            (unsigned long long)h->serial, (unsigned long long)h->calls,
                            (unsigned long long)h->errors, total, total_sq,
                            (unsigned long long)(h->calls ? h->min_ns : 0),
                            (unsigned long long)h->max_ns, (unsigned long long)h->rows,
                            (unsigned long long)h->rows_calls, (long long)h->first_seen,
                            (long long)h->last_seen, (int)h->lo, counts);
    }
    Py_XDECREF(counts);
    Py_XDECREF(total);
    Py_XDECREF(total_sq);
    Py_XDECREF(texts[0]);
    Py_XDECREF(texts[1]);
    return row;
}

static PyObject *
st_read(StatementsObject *t)
{
    uint64_t n = t->shared_n;
    const uint64_t *keys = ST_KEYS(t);
    qm_st_copy *copies = NULL;
    char *buffer = NULL;
    st_lock(t);
    size_t count = 2, bytes = 0;
    for (uint64_t i = 0; i < n + 2; i++) {
        if (i >= n || keys[i] != 0) {
            const qm_st_head *h = &ST_RECORD(t, i)->h;
            if (i < n) {
                count++;
            }
            bytes += 8 * (size_t)QM_MAX_BUCKETS + h->fingerprint_len + h->sample_len;
        }
    }
    copies = PyMem_RawMalloc(count * sizeof(qm_st_copy));
    buffer = PyMem_RawMalloc(bytes + 1);
    if (copies == NULL || buffer == NULL) {
        st_unlock(t);
        PyMem_RawFree(copies);
        PyMem_RawFree(buffer);
        return PyErr_NoMemory();
    }
    uint64_t dropped = ST_HEADER(t)->dropped;
    size_t k = 2, at = 0;
    for (uint64_t i = 0; i < n + 2; i++) {
        if (i < n && keys[i] == 0) {
            continue;
        }
        const qm_st_record *r = ST_RECORD(t, i);
        qm_st_copy *c = &copies[i == n ? 0 : (i == n + 1 ? 1 : k++)];
        c->h = r->h;
        size_t span = r->h.span < 0 ? 0 : (r->h.span > QM_MAX_BUCKETS ? QM_MAX_BUCKETS : (size_t)r->h.span);
        c->counts = at;
        memcpy(buffer + at, r->counts, 8 * span);
        at += 8 * span;
        c->fingerprint = at;
        memcpy(buffer + at, r->fingerprint, r->h.fingerprint_len);
        at += r->h.fingerprint_len;
        c->sample = at;
        memcpy(buffer + at, r->sample, r->h.sample_len);
        at += r->h.sample_len;
    }
    st_unlock(t);

    PyObject *result = NULL, *evicted = NULL, *untexted = NULL;
    PyObject *rows = PyTuple_New((Py_ssize_t)(count - 2));
    if (rows == NULL) {
        goto done;
    }
    evicted = st_row(t, &copies[0], buffer, t->evicted->fingerprint, t->evicted->sample_sql);
    untexted = st_row(t, &copies[1], buffer, t->untexted->fingerprint, t->untexted->sample_sql);
    if (evicted == NULL || untexted == NULL) {
        goto done;
    }
    for (size_t j = 2; j < count; j++) {
        PyObject *row = st_row(t, &copies[j], buffer, NULL, NULL);
        if (row == NULL) {
            goto done;
        }
        PyTuple_SET_ITEM(rows, (Py_ssize_t)(j - 2), row);
    }
    result = Py_BuildValue("(KOOO)", (unsigned long long)dropped, evicted, untexted, rows);
done:
    Py_XDECREF(rows);
    Py_XDECREF(evicted);
    Py_XDECREF(untexted);
    PyMem_RawFree(copies);
    PyMem_RawFree(buffer);
    return result;
}

/* Attaches a table to its shared file's mapping (`region`, made and checked
   by querymeter.shared._statements): 0, or -1 with ValueError naming what
   does not fit. */
static int
st_attach(StatementsObject *t, PyObject *region)
{
    if (PyObject_GetBuffer(region, &t->shared_view, PyBUF_WRITABLE) < 0) {
        return -1;
    }
    t->has_view = 1;
    t->shared_n = (uint64_t)t->max_statements;
    t->layout = st_layout(t->shared_n);
    const qm_st_header *h = t->shared_view.buf;
    const char *problem = NULL;
    if ((size_t)t->shared_view.len < t->layout.size) {
        problem = "the shared statement table is smaller than its layout";
    }
    else if (memcmp(h->magic, QM_ST_MAGIC, 8) != 0 || h->version != QM_ST_VERSION
             || h->record_size != sizeof(qm_st_record)) {
        problem = "not a shared statement table of this version";
    }
    else if (h->max_statements != t->shared_n) {
        problem = "the shared statement table holds another max_statements";
    }
    else if (h->lock_kind != QM_ST_LOCK_ATOMIC) {
        problem = "the shared statement table is locked with fcntl (made by the pure-Python "
                  "core): open it with that core";
    }
    if (problem != NULL) {
        PyErr_SetString(PyExc_ValueError, problem);
        return -1;
    }
    t->shared = t->shared_view.buf;
    return 0;
}

/* Records one query.  Never raises an Exception (a failure of ours is a
   fault, and the query goes to `untexted` so that nothing is lost); -1, with
   the exception set, only for one that is the application's (an interrupt
   while fingerprinting). */
static int
statements_record(StatementsObject *t, PyObject *dialect, PyObject *sql,
                  uint64_t elapsed, int error, int64_t rows, int64_t wall, uint64_t times)
{
    if (t->shared != NULL) {
        return st_record(t, dialect, sql, elapsed, error, rows, wall, times);
    }
    if (sql == NULL || sql == Py_None) {
        entry_add(t->untexted, elapsed, error, rows, wall, times);
        return 0;
    }
    if (dialect == NULL) {
        dialect = Py_None;
    }
    PyObject *cache = NULL;
    if (PyUnicode_CheckExact(sql) || PyBytes_CheckExact(sql)) {
        cache = statements_cache(t, dialect);
        if (cache != NULL) {
            EntryObject *hit = (EntryObject *)PyDict_GetItemWithError(cache, sql);
            if (hit != NULL && hit->live) {
                entry_add(hit, elapsed, error, rows, wall, times);
                return 0;
            }
            if (hit != NULL && PyDict_DelItem(cache, sql) < 0) {
                cache = NULL;
            }
        }
        if (PyErr_Occurred()) {
            goto failed;
        }
    }
    Py_INCREF(sql);
    Py_INCREF(dialect);
    EntryObject *entry = statements_miss(t, dialect, sql, cache);
    Py_DECREF(dialect);
    Py_DECREF(sql);
    if (entry != NULL) {
        entry_add(entry, elapsed, error, rows, wall, times);
        Py_DECREF(entry);
        return 0;
    }
failed:
    entry_add(t->untexted, elapsed, error, rows, wall, times);
    if (!PyErr_ExceptionMatches(PyExc_Exception)) {
        return -1;
    }
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    int status = report_fault("could not record a statement", value);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    return status;
}

static PyObject *
statements_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"miss", "max_statements", "cache_limit", "region", "lock_fd", NULL};
    PyObject *miss, *region = Py_None;
    Py_ssize_t max_statements, cache_limit;
    int lock_fd = -1;  /* the pure-Python core's lock; this core's is in the region */
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "Onn|Oi:Statements", kwlist, &miss,
                                     &max_statements, &cache_limit, &region, &lock_fd)) {
        return NULL;
    }
    if (!PyCallable_Check(miss)) {
        PyErr_SetString(PyExc_TypeError, "miss must be callable");
        return NULL;
    }
    if (max_statements < 1 || cache_limit < 1) {
        PyErr_SetString(PyExc_ValueError, "max_statements and cache_limit must be at least 1");
        return NULL;
    }
    PyObject *module = PyType_GetModuleByDef(type, &core_module);
    if (module == NULL) {
        return NULL;
    }
    module_state *state = PyModule_GetState(module);
    StatementsObject *t = (StatementsObject *)type->tp_alloc(type, 0);
    if (t == NULL) {
        return NULL;
    }
    t->entry_type = (PyTypeObject *)Py_NewRef(state->entry_type);
    t->entries = PyDict_New();
    t->caches = PyDict_New();
    t->memo_dialect = NULL;
    t->memo_cache = NULL;
    t->miss = Py_NewRef(miss);
    t->max_statements = max_statements;
    t->cache_limit = cache_limit;
    t->dropped = 0;
    t->next_serial = 1;
    PyObject *evicted = PyUnicode_FromString("(evicted)");
    PyObject *untexted = PyUnicode_FromString("(no statement text)");
    PyObject *empty = PyUnicode_FromString("");
    if (evicted && untexted && empty) {
        t->evicted = entry_new(t->entry_type, evicted, empty, 0);
        t->untexted = entry_new(t->entry_type, untexted, empty, 0);
    }
    Py_XDECREF(evicted);
    Py_XDECREF(untexted);
    Py_XDECREF(empty);
    if (t->entries == NULL || t->caches == NULL || t->evicted == NULL || t->untexted == NULL) {
        Py_DECREF(t);
        return NULL;
    }
    if (region != Py_None && st_attach(t, region) < 0) {
        Py_DECREF(t);
        return NULL;
    }
    return (PyObject *)t;
}

static int
statements_traverse(StatementsObject *t, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(t));
    Py_VISIT(t->entries);
    Py_VISIT(t->caches);
    Py_VISIT(t->memo_dialect);
    Py_VISIT(t->memo_cache);
    Py_VISIT(t->miss);
    return 0;
}

static int
statements_clear(StatementsObject *t)
{
    Py_CLEAR(t->entries);
    Py_CLEAR(t->caches);
    Py_CLEAR(t->memo_dialect);
    Py_CLEAR(t->memo_cache);
    Py_CLEAR(t->miss);
    return 0;
}

static void
statements_dealloc(StatementsObject *t)
{
    PyTypeObject *tp = Py_TYPE(t);
    PyObject_GC_UnTrack(t);
    statements_clear(t);
    Py_CLEAR(t->evicted);
    Py_CLEAR(t->untexted);
    Py_CLEAR(t->entry_type);
    if (t->has_view) {
        t->shared = NULL;
        t->has_view = 0;
        PyBuffer_Release(&t->shared_view);
    }
    tp->tp_free((PyObject *)t);
    Py_DECREF(tp);
}

/* _record(sql, dialect, elapsed_ns, error, rows, times=1): what a shape does
   at a query's end, `times` over (for tests: a count that needs 64 bits). */
static PyObject *
statements_record_method(StatementsObject *t, PyObject *args)
{
    PyObject *sql, *dialect;
    unsigned long long elapsed, times = 1;
    int error;
    long long rows;
    if (!PyArg_ParseTuple(args, "OOKpL|K:_record", &sql, &dialect, &elapsed, &error, &rows,
                          &times)) {
        return NULL;
    }
    if (check_dialect(dialect) < 0) {
        return NULL;
    }
    if (statements_record(t, dialect, sql, (uint64_t)elapsed, error, rows, wall_ns(),
                          (uint64_t)times) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* A copy of one entry's figures, taken inside the reading's critical section. */
typedef struct {
    EntryObject *entry;     /* strong reference, for its fingerprint and text */
    uint64_t serial, calls, errors, min_ns, max_ns, rows, rows_calls;
    qm_u128 total_ns, total_sq;
    int64_t first_seen, last_seen;
    int32_t lo;
    PyObject *counts;       /* _read: bytes, the histogram as native uint64 */
    PyObject *buffer;       /* _read_rows: borrowed, the bytes that hold it ... */
    Py_ssize_t start, end;  /* ... from start to end */
    Py_ssize_t chunk;       /* which of the reading's buffers that is */
} entry_copy;

/* An entry's histogram as native uint64, into `to` (span of them). */
static void
copy_counts(const EntryObject *e, uint64_t *to)
{
    if (e->wide) {
        memcpy(to, e->counts, (size_t)e->span * sizeof(uint64_t));
    }
    else {
        const uint32_t *from = e->counts;
        for (int32_t i = 0; i < e->span; i++) {
            to[i] = from[i];
        }
    }
}

static void
copy_figures(entry_copy *c, EntryObject *e)
{
    c->entry = e;
    c->serial = e->serial;
    c->calls = e->calls;
    c->errors = e->errors;
    c->min_ns = e->calls ? e->min_ns : 0;
    c->max_ns = e->max_ns;
    c->rows = e->rows;
    c->rows_calls = e->rows_calls;
    c->total_ns = e->total_ns;
    c->total_sq = e->total_sq;
    c->first_seen = e->first_seen;
    c->last_seen = e->last_seen;
    c->lo = e->lo;
}

/* Copies one entry for _read.  Its histogram goes straight into a new bytes
   object: allocating one runs no Python code (it is not tracked by the
   collector), so the copy stays inside the critical section, with one pass
   over the counts and no scratch buffer.  -1 when memory ran out. */
static int
copy_entry(entry_copy *c, EntryObject *e)
{
    PyObject *counts = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)e->span * 8);
    if (counts == NULL) {
        return -1;
    }
    copy_counts(e, (uint64_t *)PyBytes_AS_STRING(counts));
    c->counts = counts;
    copy_figures(c, e);
    return 0;
}

/* The row tuple of a copy (takes over its histogram): 15 items for _read,
   17 for _read_rows (the buffer that holds the histogram, its start and end,
   instead of the histogram's own bytes).  Built item by item (no format
   string to parse), and untracked by the collector as the collector itself
   would untrack it: it holds only str, int and bytes. */
static PyObject *
entry_copy_to_tuple(entry_copy *c, int flat)
{
    Py_ssize_t size = flat ? 17 : 15;
    PyObject *row = PyTuple_New(size);
    if (row == NULL) {
        return NULL;
    }
    PyObject *items[17] = {
        Py_NewRef(c->entry->fingerprint),
        Py_NewRef(c->entry->sample_sql),
        PyLong_FromUnsignedLongLong(c->serial),
        PyLong_FromUnsignedLongLong(c->calls),
        PyLong_FromUnsignedLongLong(c->errors),
        u128_to_pylong(c->total_ns),
        u128_to_pylong(c->total_sq),
        PyLong_FromUnsignedLongLong(c->min_ns),
        PyLong_FromUnsignedLongLong(c->max_ns),
        PyLong_FromUnsignedLongLong(c->rows),
        PyLong_FromUnsignedLongLong(c->rows_calls),
        PyLong_FromLongLong(c->first_seen),
        PyLong_FromLongLong(c->last_seen),
        PyLong_FromLong(c->lo),
        flat ? Py_NewRef(c->buffer) : c->counts,
        flat ? PyLong_FromSsize_t(c->start) : NULL,
        flat ? PyLong_FromSsize_t(c->end) : NULL,
    };
    c->counts = NULL;
    int failed = 0;
    for (Py_ssize_t k = 0; k < size; k++) {
        failed |= items[k] == NULL;
        PyTuple_SET_ITEM(row, k, items[k]);  /* a NULL item is skipped by the dealloc */
    }
    if (failed) {
        Py_DECREF(row);
        return NULL;
    }
    PyObject_GC_UnTrack(row);
    return row;
}

/* (dropped, evicted, untexted, rows) from the copies: the second half of
   _read and of _read_rows (`flat`).  Takes over the copies' histograms; the
   caller holds the entries and the buffers. */
static PyObject *
copies_to_reading(uint64_t dropped, entry_copy *copies, Py_ssize_t count, int flat)
{
    PyObject *result = NULL, *evicted = NULL, *untexted = NULL;
    PyObject *rows = PyTuple_New(count - 2);
    if (rows == NULL) {
        goto done;
    }
    evicted = entry_copy_to_tuple(&copies[0], flat);
    untexted = entry_copy_to_tuple(&copies[1], flat);
    if (evicted == NULL || untexted == NULL) {
        goto done;
    }
    for (Py_ssize_t k = 2; k < count; k++) {
        PyObject *row = entry_copy_to_tuple(&copies[k], flat);
        if (row == NULL) {
            goto done;
        }
        PyTuple_SET_ITEM(rows, k - 2, row);
    }
    result = Py_BuildValue("(KOOO)", (unsigned long long)dropped, evicted, untexted, rows);
done:
    Py_XDECREF(rows);
    Py_XDECREF(evicted);
    Py_XDECREF(untexted);
    for (Py_ssize_t k = 0; k < count; k++) {
        Py_CLEAR(copies[k].counts);
    }
    return result;
}

/* _read() -> (dropped, evicted, untexted, (entry, ...)), every entry a tuple
   (fingerprint, sample_sql, serial, calls, errors, total_ns, total_sq,
   min_ns, max_ns, rows, rows_calls, first_seen_ns, last_seen_ns,
   histogram_lo, histogram_counts as native uint64 bytes).  All of it at one
   instant: the figures are copied with no Python code in between, and only
   then made into objects. */
static PyObject *
statements_read(StatementsObject *t, PyObject *Py_UNUSED(ignored))
{
    if (t->shared != NULL) {
        return st_read(t);
    }
    Py_ssize_t n = PyDict_GET_SIZE(t->entries) + 2;
    entry_copy *copies = PyMem_Calloc((size_t)n, sizeof(entry_copy));
    if (copies == NULL) {
        return PyErr_NoMemory();
    }
    /* The critical section: plain copies (and bytes objects, which run no
       Python code). */
    PyObject *result = NULL;
    uint64_t dropped = t->dropped;
    Py_ssize_t i = 0;
    if (copy_entry(&copies[0], t->evicted) < 0) {
        goto failed;
    }
    i = 1;
    if (copy_entry(&copies[1], t->untexted) < 0) {
        goto failed;
    }
    i = 2;
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (i < n && PyDict_Next(t->entries, &pos, &key, &value)) {
        if (copy_entry(&copies[i], (EntryObject *)value) < 0) {
            goto failed;
        }
        i++;
    }
    for (Py_ssize_t k = 0; k < i; k++) {
        Py_INCREF(copies[k].entry);
    }
    /* Then the objects. */
    result = copies_to_reading(dropped, copies, i, 0);
    for (Py_ssize_t k = 0; k < i; k++) {
        Py_DECREF(copies[k].entry);
    }
    PyMem_Free(copies);
    return result;
failed:
    for (Py_ssize_t k = 0; k < i; k++) {
        Py_XDECREF(copies[k].counts);
    }
    PyMem_Free(copies);
    return NULL;
}

/* A row of _read_rows from a row of _read: its histogram's bytes are its
   buffer, whole. */
static PyObject *
flat_row(PyObject *row)
{
    PyObject *counts = PyTuple_GET_ITEM(row, 14);
    PyObject *flat = PyTuple_New(17);
    if (flat == NULL) {
        return NULL;
    }
    for (Py_ssize_t k = 0; k < 15; k++) {
        PyTuple_SET_ITEM(flat, k, Py_NewRef(PyTuple_GET_ITEM(row, k)));
    }
    PyTuple_SET_ITEM(flat, 15, PyLong_FromLong(0));
    PyObject *end = PyLong_FromSsize_t(PyBytes_GET_SIZE(counts));
    PyTuple_SET_ITEM(flat, 16, end);
    if (end == NULL) {
        Py_DECREF(flat);
        return NULL;
    }
    return flat;
}

/* _read_rows() of a shared table: its _read() (whose copy under the lock
   already makes one bytes object per histogram), in _read_rows' shape. */
static PyObject *
st_read_rows(StatementsObject *t)
{
    PyObject *reading = st_read(t);
    if (reading == NULL) {
        return NULL;
    }
    PyObject *rows = PyTuple_GET_ITEM(reading, 3);
    Py_ssize_t count = PyTuple_GET_SIZE(rows);
    PyObject *flat_rows = PyTuple_New(count);
    PyObject *evicted = NULL, *untexted = NULL, *result = NULL;
    if (flat_rows == NULL) {
        goto done;
    }
    evicted = flat_row(PyTuple_GET_ITEM(reading, 1));
    untexted = evicted ? flat_row(PyTuple_GET_ITEM(reading, 2)) : NULL;
    if (untexted == NULL) {
        goto done;
    }
    for (Py_ssize_t k = 0; k < count; k++) {
        PyObject *row = flat_row(PyTuple_GET_ITEM(rows, k));
        if (row == NULL) {
            goto done;
        }
        PyTuple_SET_ITEM(flat_rows, k, row);
    }
    result = Py_BuildValue("(OOOO)", PyTuple_GET_ITEM(reading, 0), evicted, untexted, flat_rows);
done:
    Py_DECREF(reading);
    Py_XDECREF(flat_rows);
    Py_XDECREF(evicted);
    Py_XDECREF(untexted);
    return result;
}

/* The histograms of _read_rows go into buffers of at most this many bytes:
   few allocations, each below the C library's threshold for mapping fresh
   pages (128 KiB in glibc), so that each reading reuses freed memory instead
   of faulting in new pages. */
#define QM_READ_BUFFER_BYTES (64 * 1024)

/* _read_rows() -> (dropped, evicted, untexted, (entry, ...)): what _read()
   reads, each entry's histogram in a buffer it shares with other entries: an
   entry's last three items are (buffer, start, end), its histogram being
   buffer[start:end] (native uint64 counts), instead of the histogram's own
   bytes.  One allocation per few dozen rows instead of one per row, for a
   reader that needs few of the histograms (the flight recorder). */
static PyObject *
statements_read_rows(StatementsObject *t, PyObject *Py_UNUSED(ignored))
{
    if (t->shared != NULL) {
        return st_read_rows(t);
    }
    Py_ssize_t n = PyDict_GET_SIZE(t->entries) + 2;
    entry_copy *copies = PyMem_Calloc((size_t)n, sizeof(entry_copy));
    /* At least 12 histograms (of at most QM_MAX_BUCKETS) fit in a buffer. */
    Py_ssize_t most = n / (QM_READ_BUFFER_BYTES / (8 * QM_MAX_BUCKETS)) + 1;
    PyObject **buffers = PyMem_Calloc((size_t)most, sizeof(PyObject *));
    if (copies == NULL || buffers == NULL) {
        PyMem_Free(copies);
        PyMem_Free(buffers);
        return PyErr_NoMemory();
    }
    /* The critical section: where each histogram goes (one pass over the
       spans), the buffers (bytes objects: no Python code runs), the copies. */
    uint64_t dropped = t->dropped;
    EntryObject *special[2] = {t->evicted, t->untexted};
    Py_ssize_t pos = 0, i = 0, buffer_count = 0, at = 0;
    PyObject *key, *value, *result = NULL;
    for (; i < n; i++) {
        EntryObject *e;
        if (i < 2) {
            e = special[i];
        }
        else if (PyDict_Next(t->entries, &pos, &key, &value)) {
            e = (EntryObject *)value;
        }
        else {
            break;
        }
        Py_ssize_t size = (Py_ssize_t)e->span * 8;
        if (buffer_count == 0 || at + size > QM_READ_BUFFER_BYTES) {
            buffer_count++;
            at = 0;
        }
        copies[i].entry = e;
        copies[i].start = at;
        copies[i].end = at + size;
        copies[i].chunk = buffer_count - 1;  /* its size: the last end in it */
        at += size;
    }
    Py_ssize_t count = i;
    for (Py_ssize_t k = 0, b = 0; k < count; k++) {
        if (k + 1 == count || copies[k + 1].chunk != b) {
            buffers[b] = PyBytes_FromStringAndSize(NULL, copies[k].end);
            if (buffers[b] == NULL) {
                goto failed;
            }
            b++;
        }
    }
    for (Py_ssize_t k = 0; k < count; k++) {
        EntryObject *e = copies[k].entry;
        copies[k].buffer = buffers[copies[k].chunk];
        copy_figures(&copies[k], e);
        copy_counts(e, (uint64_t *)(PyBytes_AS_STRING(copies[k].buffer) + copies[k].start));
        Py_INCREF(e);
    }
    /* Then the objects. */
    result = copies_to_reading(dropped, copies, count, 1);
    for (Py_ssize_t k = 0; k < count; k++) {
        Py_DECREF(copies[k].entry);
    }
failed:
    for (Py_ssize_t b = 0; b < buffer_count; b++) {
        Py_XDECREF(buffers[b]);
    }
    PyMem_Free(buffers);
    PyMem_Free(copies);
    return result;
}

static PyObject *
statements_get_len(StatementsObject *t, void *Py_UNUSED(closure))
{
    if (t->shared != NULL) {
        return PyLong_FromUnsignedLongLong(ST_HEADER(t)->live);
    }
    return PyLong_FromSsize_t(PyDict_GET_SIZE(t->entries));
}

/* ------------------------------------------------ comparing two readings */

/* The fields of a reading's row (see _read) that these functions use. */
#define QM_ROW_FIELDS 15
#define QM_ROW_SERIAL 2
#define QM_ROW_CALLS 3
#define QM_ROW_TOTAL 5
#define QM_ROW_ROWS_CALLS 10

/* An exact non-negative int of at most 128 bits; -1 with an exception if not. */
static int
pylong_to_u128(PyObject *value, qm_u128 *out)
{
    unsigned long long low = PyLong_AsUnsignedLongLong(value);
    if (low != (unsigned long long)-1 || !PyErr_Occurred()) {
        *out = low;
        return 0;
    }
    if (!PyErr_ExceptionMatches(PyExc_OverflowError) || !PyLong_Check(value)
        || _PyLong_Sign(value) < 0 || _PyLong_NumBits(value) > 128) {
        return -1;
    }
    PyErr_Clear();
    unsigned char bytes[16];
    if (_PyLong_AsByteArray((PyLongObject *)value, bytes, 16, 1, 0) < 0) {
        return -1;
    }
    qm_u128 result = 0;
    for (int k = 15; k >= 0; k--) {
        result = (result << 8) | bytes[k];
    }
    *out = result;
    return 0;
}

/* A row of a reading (_read's or _read_rows'): a tuple of 15 or 17 items, else
   TypeError. */
static int
check_row(PyObject *row)
{
    if (!PyTuple_Check(row)
        || (PyTuple_GET_SIZE(row) != QM_ROW_FIELDS && PyTuple_GET_SIZE(row) != QM_ROW_FIELDS + 2)) {
        PyErr_SetString(PyExc_TypeError, "a reading's row must be a tuple of 15 or 17 items");
        return -1;
    }
    return 0;
}

static int
row_u64(PyObject *row, Py_ssize_t field, uint64_t *out)
{
    unsigned long long value = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(row, field));
    if (value == (unsigned long long)-1 && PyErr_Occurred()) {
        return -1;
    }
    *out = value;
    return 0;
}

/* One changed row for the top: the time it gained and its fingerprint (borrowed). */
typedef struct {
    __int128 gained;
    PyObject *fingerprint;
} qm_gain;

/* Whether a ranks after b: less time, or as much and a later fingerprint (as
   heapq.nsmallest orders (-gained, fingerprint) pairs). */
static int
gain_after(const qm_gain *a, const qm_gain *b)
{
    if (a->gained != b->gained) {
        return a->gained < b->gained;
    }
    return PyUnicode_Compare(a->fingerprint, b->fingerprint) > 0;
}

/* Restores the heap (the row that ranks last on top) from `at` down. */
static void
gain_sift_down(qm_gain *heap, Py_ssize_t size, Py_ssize_t at)
{
    for (;;) {
        Py_ssize_t last = at, left = 2 * at + 1, right = left + 1;
        if (left < size && gain_after(&heap[left], &heap[last])) {
            last = left;
        }
        if (right < size && gain_after(&heap[right], &heap[last])) {
            last = right;
        }
        if (last == at) {
            return;
        }
        qm_gain swap = heap[at];
        heap[at] = heap[last];
        heap[last] = swap;
        at = last;
    }
}

static int
gain_sort_compare(const void *a, const void *b)
{
    return gain_after(a, b) ? 1 : (gain_after(b, a) ? -1 : 0);
}

/* _changed(rows, earlier, top) -> (fingerprints, changed, changed_with_rows)

   The per-row work of a recorder step, in C: compares every row of a
   reading (`rows`, a dict fingerprint -> row) with the same statement's row
   in an earlier reading (`earlier`, the same kind of dict).  A row changed
   if it has calls and no earlier row of its serial, or if its calls differ
   from the earlier row's.  Returns the fingerprints of the `top` changed rows
   that gained the most time (all of a new row's), ties in fingerprint order;
   how many rows changed; and how many of those have rows_calls. */
static PyObject *
statements_changed(StatementsObject *t, PyObject *args)
{
    PyObject *rows, *earlier;
    Py_ssize_t top;
    if (!PyArg_ParseTuple(args, "O!O!n:_changed", &PyDict_Type, &rows, &PyDict_Type, &earlier,
                          &top)) {
        return NULL;
    }
    if (top < 0) {
        PyErr_SetString(PyExc_ValueError, "top must be at least 0");
        return NULL;
    }
    Py_ssize_t room = top < PyDict_GET_SIZE(rows) ? top : PyDict_GET_SIZE(rows);
    qm_gain *heap = PyMem_Malloc((size_t)(room > 0 ? room : 1) * sizeof(qm_gain));
    if (heap == NULL) {
        return PyErr_NoMemory();
    }
    /* No Python code runs in the loop (exact ints and str only), so the
       borrowed fingerprints stay alive. */
    Py_ssize_t size = 0, changed = 0, with_rows = 0, pos = 0;
    PyObject *fingerprint, *row, *result = NULL;
    while (PyDict_Next(rows, &pos, &fingerprint, &row)) {
        if (check_row(row) < 0 || !PyUnicode_Check(fingerprint)) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_TypeError, "a reading's fingerprints must be str");
            }
            goto done;
        }
        PyObject *before = PyDict_GetItemWithError(earlier, fingerprint);
        if (before == NULL && PyErr_Occurred()) {
            goto done;
        }
        uint64_t serial, calls, before_serial = 0, before_calls = 0, rows_calls;
        qm_u128 total, before_total = 0;
        if (row_u64(row, QM_ROW_SERIAL, &serial) < 0 || row_u64(row, QM_ROW_CALLS, &calls) < 0) {
            goto done;
        }
        int same = 0;
        if (before != NULL) {
            if (check_row(before) < 0 || row_u64(before, QM_ROW_SERIAL, &before_serial) < 0) {
                goto done;
            }
            same = before_serial == serial;
        }
        if (same) {
            if (row_u64(before, QM_ROW_CALLS, &before_calls) < 0) {
                goto done;
            }
            if (calls == before_calls) {
                continue;
            }
            if (pylong_to_u128(PyTuple_GET_ITEM(before, QM_ROW_TOTAL), &before_total) < 0) {
                goto done;
            }
        }
        else if (calls == 0) {
            continue;
        }
        if (pylong_to_u128(PyTuple_GET_ITEM(row, QM_ROW_TOTAL), &total) < 0
            || row_u64(row, QM_ROW_ROWS_CALLS, &rows_calls) < 0) {
            goto done;
        }
        changed++;
        with_rows += rows_calls != 0;
        /* Totals stay far below 2**127 (a century at a concurrency of 10,000
           is about 2**75 ns), so the signed difference is exact. */
        qm_gain gain = {(__int128)total - (__int128)before_total, fingerprint};
        if (size < room) {
            /* Sift up. */
            Py_ssize_t at = size++;
            heap[at] = gain;
            while (at > 0 && gain_after(&heap[at], &heap[(at - 1) / 2])) {
                qm_gain swap = heap[at];
                heap[at] = heap[(at - 1) / 2];
                heap[(at - 1) / 2] = swap;
                at = (at - 1) / 2;
            }
        }
        else if (size > 0 && gain_after(&heap[0], &gain)) {
            heap[0] = gain;
            gain_sift_down(heap, size, 0);
        }
    }
    qsort(heap, (size_t)size, sizeof(qm_gain), gain_sort_compare);
    PyObject *fingerprints = PyList_New(size);
    if (fingerprints == NULL) {
        goto done;
    }
    for (Py_ssize_t k = 0; k < size; k++) {
        PyList_SET_ITEM(fingerprints, k, Py_NewRef(heap[k].fingerprint));
    }
    result = Py_BuildValue("(Nnn)", fingerprints, changed, with_rows);
done:
    PyMem_Free(heap);
    return result;
}

/* _totals(rows) -> (calls, errors, total_ns, total_sq, rows, rows_calls)

   Those six fields summed over `rows` (an iterable of a reading's rows). */
static PyObject *
statements_totals(StatementsObject *t, PyObject *rows)
{
    static const Py_ssize_t fields[6] = {3, 4, 5, 6, 9, 10};
    qm_u128 sums[6] = {0, 0, 0, 0, 0, 0};
    uint64_t carries[6] = {0, 0, 0, 0, 0, 0};  /* how many times a sum wrapped 2**128 */
    PyObject *iterator = PyObject_GetIter(rows);
    if (iterator == NULL) {
        return NULL;
    }
    PyObject *row;
    while ((row = PyIter_Next(iterator)) != NULL) {
        int failed = check_row(row);
        for (int k = 0; k < 6 && !failed; k++) {
            qm_u128 value;
            failed = pylong_to_u128(PyTuple_GET_ITEM(row, fields[k]), &value) < 0;
            if (!failed) {
                sums[k] += value;
                carries[k] += sums[k] < value;
            }
        }
        Py_DECREF(row);
        if (failed) {
            break;
        }
    }
    Py_DECREF(iterator);
    if (PyErr_Occurred()) {
        return NULL;
    }
    PyObject *result = PyTuple_New(6);
    for (int k = 0; result != NULL && k < 6; k++) {
        PyObject *sum = u128_to_pylong(sums[k]);
        if (sum != NULL && carries[k]) {
            /* sum + carries * 2**128, exact as Python's ints are. */
            PyObject *carried = PyLong_FromUnsignedLongLong(carries[k]);
            PyObject *shift = PyLong_FromLong(128);
            PyObject *high = carried && shift ? PyNumber_Lshift(carried, shift) : NULL;
            Py_SETREF(sum, high ? PyNumber_Add(high, sum) : NULL);
            Py_XDECREF(carried);
            Py_XDECREF(shift);
            Py_XDECREF(high);
        }
        if (sum == NULL) {
            Py_CLEAR(result);
            break;
        }
        PyTuple_SET_ITEM(result, k, sum);
    }
    return result;
}

static PyMethodDef statements_methods[] = {
    {"_record", (PyCFunction)statements_record_method, METH_VARARGS,
     PyDoc_STR("_record(sql, dialect, elapsed_ns, error, rows, times=1) -> None\n\n"
               "Record a query, times over, as a hook's shape does at its end.")},
    {"_read", (PyCFunction)statements_read, METH_NOARGS,
     PyDoc_STR("_read() -> (dropped, evicted, untexted, entries)\n\n"
               "Every entry's figures at one instant.")},
    {"_read_rows", (PyCFunction)statements_read_rows, METH_NOARGS,
     PyDoc_STR("_read_rows() -> (dropped, evicted, untexted, entries)\n\n"
               "As _read(), each histogram as (buffer, start, end) in buffers rows share.")},
    {"_changed", (PyCFunction)statements_changed, METH_VARARGS,
     PyDoc_STR("_changed(rows, earlier, top) -> (fingerprints, changed, changed_with_rows)\n\n"
               "The top changed rows of a reading by time gained since an earlier one.")},
    {"_totals", (PyCFunction)statements_totals, METH_O,
     PyDoc_STR("_totals(rows) -> (calls, errors, total_ns, total_sq, rows, rows_calls)\n\n"
               "Those fields summed over a reading's rows.")},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef statements_getset[] = {
    {"size", (getter)statements_get_len, NULL,
     PyDoc_STR("How many statements the table holds."), NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot statements_slots[] = {
    {Py_tp_doc, (void *)PyDoc_STR(
        "Statements(miss, max_statements, cache_limit, region=None, lock_fd=-1)\n\n"
        "A meter's statement table: figures per fingerprint, found by exact text;\n"
        "with a region, the table many processes share in it.")},
    {Py_tp_new, (void *)statements_new},
    {Py_tp_dealloc, (void *)statements_dealloc},
    {Py_tp_traverse, (void *)statements_traverse},
    {Py_tp_clear, (void *)statements_clear},
    {Py_tp_methods, statements_methods},
    {Py_tp_getset, statements_getset},
    {0, NULL},
};

static PyType_Spec statements_spec = {
    .name = "querymeter.core._c.Statements",
    .basicsize = sizeof(StatementsObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = statements_slots,
};

/* ------------------------------------------------------------- Sampling */

static inline uint64_t
sampling_random(SamplingObject *s)
{
    /* xorshift64*: a draw costs a few instructions, and needs no lock under the GIL. */
    uint64_t x = s->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    s->rng = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static inline int
sampling_chooses(SamplingObject *s, uint64_t elapsed)
{
    if (s->threshold_ns >= 0 && elapsed >= (uint64_t)s->threshold_ns) {
        return 1;
    }
    if (s->rate <= 0.0) {
        return 0;
    }
    if (s->rate >= 1.0) {
        return 1;
    }
    /* 53 random bits as a double in [0, 1). */
    return (double)(sampling_random(s) >> 11) * (1.0 / 9007199254740992.0) < s->rate;
}

static PyObject *
sampling_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"rate", "threshold_ns", "capture", "seed", NULL};
    double rate;
    long long threshold_ns;
    PyObject *capture;
    unsigned long long seed;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "dLOK:Sampling", kwlist, &rate,
                                     &threshold_ns, &capture, &seed)) {
        return NULL;
    }
    if (!(rate >= 0.0 && rate <= 1.0)) {
        PyErr_SetString(PyExc_ValueError, "rate must be from 0 to 1");
        return NULL;
    }
    if (!PyCallable_Check(capture)) {
        PyErr_SetString(PyExc_TypeError, "capture must be callable");
        return NULL;
    }
    SamplingObject *s = (SamplingObject *)type->tp_alloc(type, 0);
    if (s == NULL) {
        return NULL;
    }
    s->rate = rate;
    s->threshold_ns = threshold_ns < 0 ? -1 : threshold_ns;
    s->rng = seed ? seed : 0x9E3779B97F4A7C15ULL;
    s->capture = Py_NewRef(capture);
    return (PyObject *)s;
}

static int
sampling_traverse(SamplingObject *s, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(s));
    Py_VISIT(s->capture);
    return 0;
}

static int
sampling_clear(SamplingObject *s)
{
    Py_CLEAR(s->capture);
    return 0;
}

static void
sampling_dealloc(SamplingObject *s)
{
    PyTypeObject *tp = Py_TYPE(s);
    PyObject_GC_UnTrack(s);
    sampling_clear(s);
    tp->tp_free((PyObject *)s);
    Py_DECREF(tp);
}

static PyObject *
sampling_chooses_method(SamplingObject *s, PyObject *arg)
{
    unsigned long long elapsed = PyLong_AsUnsignedLongLong(arg);
    if (elapsed == (unsigned long long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    return PyBool_FromLong(sampling_chooses(s, (uint64_t)elapsed));
}

static PyMethodDef sampling_methods[] = {
    {"_chooses", (PyCFunction)sampling_chooses_method, METH_O,
     PyDoc_STR("_chooses(elapsed_ns) -> bool\n\nWhether a query that took elapsed_ns is captured.")},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot sampling_slots[] = {
    {Py_tp_doc, (void *)PyDoc_STR(
        "Sampling(rate, threshold_ns, capture, seed)\n\n"
        "Which counted queries a meter captures: at random, and every slow one.")},
    {Py_tp_new, (void *)sampling_new},
    {Py_tp_dealloc, (void *)sampling_dealloc},
    {Py_tp_traverse, (void *)sampling_traverse},
    {Py_tp_clear, (void *)sampling_clear},
    {Py_tp_methods, sampling_methods},
    {0, NULL},
};

static PyType_Spec sampling_spec = {
    .name = "querymeter.core._c.Sampling",
    .basicsize = sizeof(SamplingObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = sampling_slots,
};

/* ------------------------------------------------------------ observing */

/* A cursor's rowcount, or -1 where it does not know (or has none).  -1 with
   *interrupted set when reading it raised something not an Exception. */
static int64_t
read_rowcount(PyObject *cursor, int *interrupted)
{
    static PyObject *name = NULL;
    if (name == NULL) {
        name = PyUnicode_InternFromString("rowcount");
        if (name == NULL) {
            PyErr_Clear();
            return -1;
        }
    }
    PyObject *value = PyObject_GetAttr(cursor, name);
    if (value == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) {
            *interrupted = 1;
            return -1;
        }
        PyErr_Clear();
        return -1;
    }
    int64_t rows = -1;
    if (PyLong_CheckExact(value)) {
        int overflow = 0;
        long long n = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (!overflow && n >= 0) {
            rows = n;
        }
        PyErr_Clear();
    }
    Py_DECREF(value);
    return rows;
}

static int
sampling_capture(SamplingObject *s, const statement_ref *st, uint64_t elapsed,
                 PyObject *error_type, int64_t rows, int64_t wall)
{
    PyObject *result = PyObject_CallFunction(
        s->capture, "OOOLKOL", st && st->sql ? st->sql : Py_None,
        st && st->dialect ? st->dialect : Py_None, st && st->params ? st->params : Py_None,
        (long long)wall, (unsigned long long)elapsed, error_type ? error_type : Py_None,
        (long long)rows);
    if (result != NULL) {
        Py_DECREF(result);
        return 0;
    }
    if (!PyErr_ExceptionMatches(PyExc_Exception)) {
        return -1;
    }
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    int status = report_fault("could not capture a sample", value);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    return status;
}

/* ---------------------------------------------------------------- Scope */

/* A scope: the queries counted inside a `with querymeter.scope(...)` block,
   found through a context variable (so it follows asyncio tasks, and threads
   that copy the context).  Counts every query counted by any meter of this
   core inside it, and in every enclosing scope; keeps how often each text ran
   (fingerprinted only when read: the N+1 pattern). */
typedef struct ScopeObject {
    PyObject_HEAD
    struct ScopeObject *parent;
    PyObject *focus;        /* frozenset of session keys that want its queries, or NULL */
    PyObject *tags;         /* the scope's tags (merged with its parents'), a mapping */
    uint64_t queries;
    uint64_t errors;
    uint64_t db_ns;
    PyObject *texts;        /* dict: statement text -> times run */
    PyObject *dialects;     /* dict: statement text -> its dialect (or None) */
} ScopeObject;

static PyObject *qm_scope_var = NULL;   /* ContextVar holding the innermost Scope */
static Py_ssize_t qm_scopes_open = 0;   /* scopes entered and not exited, all threads */

static int
scope_traverse(ScopeObject *sc, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(sc));
    Py_VISIT(sc->parent);
    Py_VISIT(sc->focus);
    Py_VISIT(sc->tags);
    Py_VISIT(sc->texts);
    Py_VISIT(sc->dialects);
    return 0;
}

static int
scope_clear(ScopeObject *sc)
{
    Py_CLEAR(sc->parent);
    Py_CLEAR(sc->focus);
    Py_CLEAR(sc->tags);
    Py_CLEAR(sc->texts);
    Py_CLEAR(sc->dialects);
    return 0;
}

static void
scope_dealloc(ScopeObject *sc)
{
    PyTypeObject *tp = Py_TYPE(sc);
    PyObject_GC_UnTrack(sc);
    scope_clear(sc);
    tp->tp_free((PyObject *)sc);
    Py_DECREF(tp);
}

/* The innermost scope of the running context (a new reference), or NULL. */
static ScopeObject *
current_scope(void)
{
    if (qm_scopes_open <= 0 || qm_scope_var == NULL) {
        return NULL;
    }
    PyObject *value = NULL;
    if (PyContextVar_Get(qm_scope_var, NULL, &value) < 0) {
        PyErr_Clear();
        return NULL;
    }
    return (ScopeObject *)value;
}

/* One query, in the scope and every enclosing one.  Failures (memory) only
   cost the text's count, never the figures. */
static void
scope_record(ScopeObject *sc, const statement_ref *st, uint64_t elapsed, int error)
{
    PyObject *sql = st != NULL ? st->sql : NULL;
    int texted = sql != NULL && (PyUnicode_CheckExact(sql) || PyBytes_CheckExact(sql));
    for (; sc != NULL; sc = sc->parent) {
        sc->queries += 1;
        sc->errors += error ? 1 : 0;
        sc->db_ns += elapsed;
        if (!texted) {
            continue;
        }
        PyObject *count = PyDict_GetItemWithError(sc->texts, sql);
        long long times = count != NULL ? PyLong_AsLongLong(count) : 0;
        PyObject *next = PyLong_FromLongLong(times + 1);
        if (next == NULL || PyDict_SetItem(sc->texts, sql, next) < 0
            || (count == NULL
                && PyDict_SetItem(sc->dialects, sql,
                                  st->dialect != NULL ? st->dialect : Py_None) < 0)) {
            PyErr_Clear();
        }
        Py_XDECREF(next);
    }
}

static PyObject *
scope_read(ScopeObject *sc, PyObject *Py_UNUSED(ignored))
{
    PyObject *texts = PyDict_Copy(sc->texts);
    PyObject *dialects = PyDict_Copy(sc->dialects);
    if (texts == NULL || dialects == NULL) {
        Py_XDECREF(texts);
        Py_XDECREF(dialects);
        return NULL;
    }
    return Py_BuildValue("(KKKNN)", (unsigned long long)sc->queries,
                         (unsigned long long)sc->errors, (unsigned long long)sc->db_ns, texts,
                         dialects);
}

static PyObject *
scope_tags(ScopeObject *sc, PyObject *Py_UNUSED(ignored))
{
    return Py_NewRef(sc->tags);
}

/* _retag(focus, tags): the scope's tags and focus from now on (its route,
   learned once the framework has routed the request). */
static PyObject *
scope_retag(ScopeObject *sc, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_retag() takes focus and tags");
        return NULL;
    }
    if (args[0] != Py_None && !PyFrozenSet_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "focus must be a frozenset or None");
        return NULL;
    }
    Py_XSETREF(sc->focus, args[0] == Py_None ? NULL : Py_NewRef(args[0]));
    Py_XSETREF(sc->tags, Py_NewRef(args[1]));
    Py_RETURN_NONE;
}

static PyMethodDef scope_methods[] = {
    {"_retag", (PyCFunction)(void (*)(void))scope_retag, METH_FASTCALL,
     PyDoc_STR("_retag(focus, tags) -> None\n\nThe scope's tags and focus from now on.")},
    {"_tags", (PyCFunction)scope_tags, METH_NOARGS,
     PyDoc_STR("_tags() -> mapping\n\nThe scope's tags, merged with its parents'.")},
    {"_read", (PyCFunction)scope_read, METH_NOARGS,
     PyDoc_STR("_read() -> (queries, errors, db_ns, texts, dialects)\n\n"
               "The scope's figures so far, and how often each text ran.")},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot scope_slots[] = {
    {Py_tp_doc, (void *)PyDoc_STR(
        "A scope's figures, made by _enter_scope(focus, tags): the queries counted inside it.")},
    {Py_tp_dealloc, (void *)scope_dealloc},
    {Py_tp_traverse, (void *)scope_traverse},
    {Py_tp_clear, (void *)scope_clear},
    {Py_tp_methods, scope_methods},
    {0, NULL},
};

static PyType_Spec scope_spec = {
    .name = "querymeter.core._c.Scope",
    .basicsize = sizeof(ScopeObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = scope_slots,
};

/* ------------------------------------------------------------ observing */

/* Observes a query that was counted: into the scopes it ran in, the meter's
   statement table and sampling, and a profiling session's (when its focus
   wants the query).  `error_type` is the class of the exception that ended
   it (NULL: the one in flight).  Preserves an exception in flight (the
   driver's).  Everything is observed even if something is interrupted on
   the way; then -1, with the interrupt set (chained to the driver's
   exception, if any). */
static int
observe(PyObject *table_obj, PyObject *sampling_obj, PyObject *session_table_obj,
        PyObject *session_sampling_obj, PyObject *session_focus, const statement_ref *st,
        uint64_t elapsed, int error, PyObject *error_type)
{
    int chosen = sampling_obj != NULL
                 && sampling_chooses((SamplingObject *)sampling_obj, elapsed);
    int session = session_table_obj != NULL || session_sampling_obj != NULL;
    if (table_obj == NULL && !chosen && !session && qm_scopes_open <= 0) {
        return 0;  /* sampling only, and this query not chosen: the common case */
    }
    PyObject *pending_type, *pending_value, *pending_tb;
    PyErr_Fetch(&pending_type, &pending_value, &pending_tb);
    PyObject *stop_type = NULL, *stop_value = NULL, *stop_tb = NULL;

    ScopeObject *scope = current_scope();
    if (scope != NULL) {
        scope_record(scope, st, elapsed, error);
    }
    int focused = session
                  && (session_focus == NULL
                      || (scope != NULL && scope->focus != NULL
                          && PySet_Contains(scope->focus, session_focus) == 1));
    PyErr_Clear();
    Py_XDECREF(scope);
    int session_chosen = focused && session_sampling_obj != NULL
                         && sampling_chooses((SamplingObject *)session_sampling_obj, elapsed);
    PyObject *tables[2] = {table_obj, focused ? session_table_obj : NULL};
    PyObject *samplings[2] = {chosen ? sampling_obj : NULL,
                              session_chosen ? session_sampling_obj : NULL};
    if (tables[0] == NULL && tables[1] == NULL && samplings[0] == NULL && samplings[1] == NULL) {
        PyErr_Restore(pending_type, pending_value, pending_tb);
        return 0;
    }
    /* Held: the meter's may be replaced while Python code runs below. */
    for (int i = 0; i < 2; i++) {
        Py_XINCREF(tables[i]);
        Py_XINCREF(samplings[i]);
    }

    int64_t rows = -1;
    if (!error && st != NULL && st->rows_from != NULL) {
        int interrupted = 0;
        rows = read_rowcount(st->rows_from, &interrupted);
        if (interrupted) {
            PyErr_Fetch(&stop_type, &stop_value, &stop_tb);
        }
    }
    int64_t wall = wall_ns();
    for (int i = 0; i < 2; i++) {
        if (tables[i] != NULL
            && statements_record((StatementsObject *)tables[i], st ? st->dialect : NULL,
                                 st ? st->sql : NULL, elapsed, error, rows, wall, 1) < 0
            && stop_type == NULL) {
            PyErr_Fetch(&stop_type, &stop_value, &stop_tb);
        }
        PyErr_Clear();
    }
    for (int i = 0; i < 2; i++) {
        if (samplings[i] != NULL
            && sampling_capture((SamplingObject *)samplings[i], st, elapsed,
                                error ? (error_type ? error_type : pending_type) : NULL, rows,
                                wall) < 0
            && stop_type == NULL) {
            PyErr_Fetch(&stop_type, &stop_value, &stop_tb);
        }
        PyErr_Clear();
    }
    for (int i = 0; i < 2; i++) {
        Py_XDECREF(tables[i]);
        Py_XDECREF(samplings[i]);
    }
    if (stop_type != NULL) {
        raise_with_context(stop_type, stop_value, stop_tb, pending_type, pending_value, pending_tb);
        return -1;
    }
    PyErr_Restore(pending_type, pending_value, pending_tb);
    return 0;
}

/* Calls a meter's observer with a counted query:
   observer(sql, dialect, elapsed_ns, error, error_type), the statement's
   text and dialect None where the shape does not know them, error_type the
   class of the exception that ended the query (None on success, or for an
   error that was not an exception).  Preserves an exception in flight (the
   driver's).  An Exception from the observer is a fault: counted and logged,
   never raised.  Anything else (KeyboardInterrupt) is the application's:
   -1, with it set, chained to the exception in flight. */
static int
notify_observer(PyObject *observer, const statement_ref *st, uint64_t elapsed, int error,
                PyObject *error_type)
{
    PyObject *pending_type, *pending_value, *pending_tb;
    PyErr_Fetch(&pending_type, &pending_value, &pending_tb);
    /* Held: the meter's may be replaced while it runs. */
    Py_INCREF(observer);
    PyObject *result = NULL;
    PyObject *elapsed_obj = PyLong_FromUnsignedLongLong(elapsed);
    if (elapsed_obj != NULL) {
        PyObject *args[5] = {
            st != NULL && st->sql != NULL ? st->sql : Py_None,
            st != NULL && st->dialect != NULL ? st->dialect : Py_None,
            elapsed_obj,
            error ? Py_True : Py_False,
            error && error_type != NULL ? error_type : Py_None,
        };
        result = PyObject_Vectorcall(observer, args, 5, NULL);
        Py_DECREF(elapsed_obj);
    }
    Py_DECREF(observer);
    if (result != NULL) {
        Py_DECREF(result);
        PyErr_Restore(pending_type, pending_value, pending_tb);
        return 0;
    }
    PyObject *type, *value, *tb;
    if (PyErr_ExceptionMatches(PyExc_Exception)) {
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        int status = report_fault("could not call a query observer", value);
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        if (status == 0) {
            PyErr_Restore(pending_type, pending_value, pending_tb);
            return 0;
        }
    }
    PyErr_Fetch(&type, &value, &tb);
    raise_with_context(type, value, tb, pending_type, pending_value, pending_tb);
    return -1;
}
