/* querymeter.core._c: the counters in C, the hot path of every query.

   Only what runs per query lives here: begin/end accounting, the consistent
   read, and the shapes the hooks compose so that every begin is paired with
   its end inside C (a call wrapper, a one-off call, a `with` tracker, an
   awaitable, an iterator, an async iterator, and occupancy counters for
   connection pools).  All API logic is Python; _py.py is the twin that
   must behave identically.

   Thread safety: every critical section runs with the GIL held and makes no
   call into Python between reading the clock and updating the counters, so it
   is atomic with respect to every other thread.  For the same reason an
   exception raised asynchronously (a signal handler's KeyboardInterrupt,
   PyThreadState_SetAsyncExc) can never fall between a begin and its end:
   such exceptions are only raised while Python bytecode runs.  The module
   does not declare free-threading support (no Py_mod_gil slot), so a
   free-threaded interpreter turns the GIL back on when it imports it. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>  /* PyMemberDef, T_PYSSIZET, READONLY on 3.11 */
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>
#if defined(__unix__) || defined(__APPLE__)
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <sched.h>
#include <unistd.h>
#define QM_HAVE_SHM 1
#endif

#if !defined(__SIZEOF_INT128__)
#error "querymeter.core._c needs a compiler with 128-bit integers (gcc or clang); the pure-Python core is used instead"
#endif

typedef unsigned __int128 qm_u128;

/* A clock reading that failed: no time passes (it is clamped to the stamp). */
#define QM_NO_READING INT64_MIN

/* The counter state.  A plain fixed-layout struct without Python objects, so
   that it can later live in shared memory and be updated with C11 atomics.
   Differences of readings are taken in unsigned 64-bit arithmetic: a later
   reading is never below the stamp, so the difference is exact even for a
   clock whose readings span more than 2^63 ns. */
typedef struct {
    int64_t start_ns;     /* clock reading when the meter started */
    int64_t stamp_ns;     /* last clock reading that advanced busy/total */
    int64_t started;      /* 0 until a first good reading (a failing clock) */
    int64_t concurrency;  /* queries executing now */
    uint64_t queries;     /* completed queries */
    uint64_t errors;      /* of those, the ones that raised */
    uint64_t busy_ns;     /* time with at least one query running, up to stamp */
    qm_u128 total_ns;     /* sum of response times, up to stamp; 128 bits so
                             that 100 years at concurrency 10,000 stays exact */
} qm_counters;

/* A query in flight, a node of its meter's list of them: queries begin in
   time order, so the list's head is the oldest (oldest_in_flight_ns()).  The
   nodes live in the objects that pair begin and end (a token, a tracker, an
   awaitable, an iterator) or on the C stack of a call wrapper; the list is
   circular around a sentinel in the meter, so that a node unlinks without
   its meter.  next == NULL: not linked.  Guarded by the GIL like the rest. */
typedef struct qm_node {
    struct qm_node *prev;
    struct qm_node *next;
    int64_t start_ns;
} qm_node;

/* ---- the shared file (SharedMeter): see querymeter/shared/_meter.py, which
   creates, checks and initialises it; the layout is fixed (version 1) and the
   pure-Python core reads the same offsets.  Every field below the lock word
   is read and written only under the lock, an atomic word holding its
   owner's token (pid << 32 | the low 32 bits of the process start time, so
   that a reused pid is not taken for the owner): a process waiting for it
   takes it over once the owner is dead (shm_lock_slow). */
#define QM_SHM_VERSION 1
#define QM_SHM_HEADER_SIZE 4096
#define QM_SHM_SLOT_SIZE 256
#define QM_SHM_PROTOCOL_ATOMIC 1

typedef struct {
    char magic[8];             /* "QMSHARED" */
    uint32_t version;
    uint32_t header_size;
    uint32_t slot_count;
    uint32_t slot_size;
    uint64_t file_size;
    uint32_t lock_protocol;    /* 1: this atomic lock (C core); 2: fcntl (Python core) */
    uint32_t ready;            /* 1 once initialised */
    uint8_t boot_id[16];
    uint64_t meter_id;         /* the service's identity on its readings */
    _Atomic uint64_t lock;     /* offset 64: the owner's token, 0 when free */
    uint64_t lock_steals;      /* locks taken over from a dead owner */
    uint64_t reaped_slots;     /* slots of dead processes settled */
    uint64_t reaped_queries;   /* their queries in flight, ended as errors */
    uint64_t claims;           /* slot generations handed out */
    uint64_t reserved[3];
    qm_counters service;       /* offset 128: the service's counters */
} qm_shm_header;

typedef struct {
    uint32_t state;            /* 0 free, 1 taken */
    uint32_t pid;
    uint64_t start_ticks;      /* the process start time, /proc/<pid>/stat field 22 */
    uint64_t generation;       /* new at each claim: who settles a slot names it */
    int64_t opened_wall_ns;
    int64_t oldest_ns;         /* start of the process's oldest query in flight */
    uint64_t has_oldest;
    uint64_t reserved[2];
    qm_counters c;             /* offset 64: the process's own counters */
} qm_shm_slot;

_Static_assert(offsetof(qm_shm_header, lock) == 64, "shared layout");
_Static_assert(offsetof(qm_shm_header, service) == 128, "shared layout");
_Static_assert(sizeof(qm_shm_header) <= QM_SHM_HEADER_SIZE, "shared layout");
_Static_assert(offsetof(qm_shm_slot, c) == 64, "shared layout");
_Static_assert(sizeof(qm_shm_slot) <= QM_SHM_SLOT_SIZE, "shared layout");
_Static_assert(offsetof(qm_counters, total_ns) == 64 && sizeof(qm_counters) == 80,
               "shared layout");

typedef struct {
    PyTypeObject *meter_type;
    PyTypeObject *token_type;
    PyTypeObject *tracker_type;
    PyTypeObject *timed_type;
    PyTypeObject *awaiting_type;
    PyTypeObject *iterating_type;
    PyTypeObject *async_iterating_type;
    PyTypeObject *occupancies_type;
    PyTypeObject *occupancy_timed_type;
    PyTypeObject *entry_type;
    PyTypeObject *statements_type;
    PyTypeObject *sampling_type;
    PyTypeObject *scope_type;
} module_state;

typedef struct {
    PyObject_HEAD
    qm_counters c;
    uint64_t serial;   /* tells this meter's tokens from other meters' */
    uint64_t epoch;    /* advanced by _reset() after fork: older tokens go inert */
    uint64_t meter_id; /* identity stamped on every reading; new after fork */
    PyObject *clock;   /* NULL: the built-in monotonic clock */
    PyObject *statements;  /* a Statements the meter records into, or NULL */
    PyObject *sampling;    /* a Sampling the meter offers queries to, or NULL */
    PyObject *observer;    /* called with each query counted (see notify_observer), or NULL */
    /* A profiling session's own statement table and sampling, and the key a
       scope carries in its focus set when the session wants its queries
       (NULL: every query). */
    PyObject *session_statements;
    PyObject *session_sampling;
    PyObject *session_focus;
    int initialized;
    PyTypeObject *token_type;    /* cached: no module-state lookup per query */
    PyTypeObject *tracker_type;
    PyTypeObject *timed_type;
    PyObject *weakreflist;
    qm_node in_flight;   /* sentinel of the list of queries in flight */
    /* A shared meter: the header and own slot in the mapping (NULL: the
       counters are `c`), the buffer held while attached, and the token that
       marks the shared lock as ours. */
    qm_shm_header *shared;
    qm_shm_slot *slot;
    Py_buffer shared_view;
    uint64_t lock_token;
} MeterObject;

typedef struct {
    PyObject_HEAD
    uint64_t serial;
    uint64_t epoch;
    qm_node node;
    int ended;
} TokenObject;

typedef struct {
    PyObject_HEAD
    MeterObject *meter;
    qm_node node;
    uint64_t epoch;
    uint64_t elapsed_ns;
    int has_elapsed;  /* whether a block has ended */
    int entered;
    PyObject *sql;    /* the block's statement text, or NULL */
    PyObject *dialect;  /* its dialect, or NULL */
} TrackerObject;

typedef struct {
    PyObject_HEAD
    MeterObject *meter;
    PyObject *func;
    vectorcallfunc func_vectorcall;
    PyObject *dialect;   /* with `statement`: the dialect of its text, or NULL */
    int statement;       /* whether each call's statement is observed */
    int layout;          /* where it is in the call's arguments */
    PyObject *dict;
    PyObject *weakreflist;
    vectorcallfunc vectorcall;
} TimedObject;

static struct PyModuleDef core_module;

/* Serials come from one counter for the whole process, never from addresses:
   a dead meter's address can be reused, and its stale tokens must not match. */
static uint64_t next_serial = 1;

/* The kill switch: while 0, no query begins (every shape calls straight
   through and no counter moves); a query begun before keeps its end.  Read
   under the GIL; set by _set_enabled(). */
static int qm_enabled = 1;

/* An epoch no meter reaches: a query "begun" while disabled ends as nothing. */
#define QM_UNCOUNTED UINT64_MAX

/* ------------------------------------------------------------------ clocks */

static inline int64_t
monotonic_ns(void)
{
#if defined(__linux__)
    /* The clock time.monotonic_ns() reads on Linux, without the Python call. */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
#elif PY_VERSION_HEX >= 0x030D0000
    PyTime_t t = 0;
    (void)PyTime_MonotonicRaw(&t);
    return (int64_t)t;
#else
    return (int64_t)_PyTime_GetMonotonicClock();
#endif
}

static inline int64_t
wall_ns(void)
{
#if defined(__linux__)
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
#elif PY_VERSION_HEX >= 0x030D0000
    PyTime_t t = 0;
    (void)PyTime_TimeRaw(&t);
    return (int64_t)t;
#else
    return (int64_t)_PyTime_GetSystemClock();
#endif
}

/* Reports a fault of querymeter's own through querymeter._faults.report, which
   logs once per cause and counts.  A fault here must not reach the application
   either, so an Exception from reporting is dropped; anything else (a signal
   handler's KeyboardInterrupt arriving meanwhile) is the application's: it is
   left set, and -1 returned.  Expects no exception to be set. */
static int
report_fault(const char *cause, PyObject *exc)
{
    PyObject *faults = PyImport_ImportModule("querymeter._faults");
    PyObject *res = NULL;
    if (faults != NULL) {
        res = PyObject_CallMethod(faults, "report", "sO", cause, exc ? exc : Py_None);
        Py_DECREF(faults);
    }
    if (res == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) {
            return -1;
        }
        PyErr_Clear();
        return 0;
    }
    Py_DECREF(res);
    return 0;
}

/* Sets the exception (type, value, tb) as the current one, with `pending`
   (an exception that was already in flight, or NULL) as its context.  Steals
   every reference. */
static void
raise_with_context(PyObject *type, PyObject *value, PyObject *tb,
                   PyObject *pending_type, PyObject *pending_value, PyObject *pending_tb)
{
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL) {
        PyException_SetTraceback(value, tb);
    }
    if (pending_type != NULL && value != NULL) {
        PyErr_NormalizeException(&pending_type, &pending_value, &pending_tb);
        if (pending_tb != NULL && pending_value != NULL) {
            PyException_SetTraceback(pending_value, pending_tb);
        }
        if (pending_value != NULL && pending_value != value) {
            PyException_SetContext(value, Py_NewRef(pending_value));
        }
    }
    Py_XDECREF(pending_type);
    Py_XDECREF(pending_value);
    Py_XDECREF(pending_tb);
    PyErr_Restore(type, value, tb);
}

/* The reading of an injected clock.  A clock that raises an Exception or
   returns something other than an int that fits in 64 bits is a fault: the
   reading is QM_NO_READING (no time passes), and nothing is raised.  A clock
   that raises anything else (KeyboardInterrupt, SystemExit) is interrupted:
   *interrupted is set and that exception is left set, for the caller to
   propagate once its counters are consistent.  Preserves an exception that
   is already set: end() runs while the driver's exception is in flight. */
static int64_t
user_clock_ns(PyObject *clock, int *interrupted)
{
    PyObject *pending_type, *pending_value, *pending_tb;
    PyErr_Fetch(&pending_type, &pending_value, &pending_tb);

    int64_t now = QM_NO_READING;
    int faulted = 0;
    PyObject *reading = PyObject_CallNoArgs(clock);
    if (reading == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) {
            *interrupted = 1;
            PyObject *type, *value, *tb;
            PyErr_Fetch(&type, &value, &tb);
            raise_with_context(type, value, tb, pending_type, pending_value, pending_tb);
            return QM_NO_READING;
        }
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        faulted = report_fault("clock raised", value);
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
    }
    else if (!PyLong_Check(reading)) {
        PyObject *exc = PyObject_CallFunction(
            PyExc_TypeError, "s", "the clock must return int nanoseconds");
        PyErr_Clear();
        faulted = report_fault("clock returned a non-int", exc);
        Py_XDECREF(exc);
    }
    else {
        int overflow = 0;
        long long value = PyLong_AsLongLongAndOverflow(reading, &overflow);
        if (overflow) {
            PyObject *exc = PyObject_CallFunction(
                PyExc_OverflowError, "s", "the clock reading does not fit in 64 bits");
            PyErr_Clear();
            faulted = report_fault("clock overflowed", exc);
            Py_XDECREF(exc);
        }
        else {
            now = (int64_t)value;
        }
    }
    Py_XDECREF(reading);
    if (faulted < 0) {
        /* Interrupted while reporting: propagate that, as from the clock. */
        *interrupted = 1;
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        raise_with_context(type, value, tb, pending_type, pending_value, pending_tb);
        return QM_NO_READING;
    }
    PyErr_Restore(pending_type, pending_value, pending_tb);
    return now;
}

/* A reading of the meter's clock.  May run Python code (an injected clock), so
   it is always taken before a critical section, never inside one. */
static inline int64_t
meter_clock(MeterObject *m, int *interrupted)
{
    if (m->clock == NULL) {
        return monotonic_ns();
    }
    return user_clock_ns(m->clock, interrupted);
}

/* ------------------------------------------------------- the accounting */

/* The reading to use: clamped to the stamp (readings taken in different
   threads, or from an injected clock, can arrive out of order, and time must
   not run back), and starting a meter whose clock failed until now. */
static inline int64_t
settle(qm_counters *c, int64_t now)
{
    if (!c->started) {
        if (now == QM_NO_READING) {
            return c->stamp_ns;
        }
        c->started = 1;
        c->start_ns = now;
        c->stamp_ns = now;
        return now;
    }
    return now < c->stamp_ns ? c->stamp_ns : now;
}

/* Brings busy and total up to `now` (settled) and commits it as the stamp. */
static inline void
advance(qm_counters *c, int64_t now)
{
    if (c->concurrency > 0) {
        uint64_t dt = (uint64_t)now - (uint64_t)c->stamp_ns;
        c->busy_ns += dt;
        c->total_ns += (qm_u128)dt * (uint64_t)c->concurrency;
    }
    c->stamp_ns = now;
}

/* Elapsed ns from `start` to `now`; 0 if `now` is not later. */
static inline uint64_t
elapsed_since(int64_t now, int64_t start)
{
    return now > start ? (uint64_t)now - (uint64_t)start : 0;
}

/* Starts a query; returns its start time.  Critical section: no Python.
   (A query is never begun while the kill switch is off: see query_begin.) */
static inline int64_t
counters_begin(qm_counters *c, int64_t now)
{
    now = settle(c, now);
    advance(c, now);
    c->concurrency += 1;
    return now;
}

/* Ends a query that began at `start`; returns its elapsed time. */
static inline uint64_t
counters_end(qm_counters *c, int64_t now, int64_t start, int error)
{
    now = settle(c, now);
    advance(c, now);
    /* Never below zero, whatever a caller did; validated tokens make this
       unreachable, the check keeps it so. */
    if (c->concurrency > 0) {
        c->concurrency -= 1;
    }
    c->queries += 1;
    if (error) {
        c->errors += 1;
    }
    return elapsed_since(now, start);
}

static void
counters_start(qm_counters *c, int64_t now)
{
    memset(c, 0, sizeof(*c));
    if (now != QM_NO_READING) {
        c->started = 1;
        c->start_ns = now;
        c->stamp_ns = now;
    }
}

/* ---------------------------------------------------- queries in flight */

static inline void
in_flight_init(MeterObject *m)
{
    m->in_flight.next = m->in_flight.prev = &m->in_flight;
    m->in_flight.start_ns = 0;
}

static inline int
in_flight_empty(MeterObject *m)
{
    return m->in_flight.next == &m->in_flight;
}

/* Appends: queries begin in time order, so the tail is the newest.  A node
   on a call wrapper's stack is unlinked by query_end before the call returns,
   which the compiler cannot see. */
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdangling-pointer"
#endif
static inline void
node_link(MeterObject *m, qm_node *node)
{
    qm_node *tail = m->in_flight.prev;
    node->prev = tail;
    node->next = &m->in_flight;
    tail->next = node;
    m->in_flight.prev = node;
}
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#pragma GCC diagnostic pop
#endif

static inline void
node_unlink(qm_node *node)
{
    if (node->next != NULL) {
        node->prev->next = node->next;
        node->next->prev = node->prev;
        node->next = node->prev = NULL;
    }
}

/* Empties the list without ending its queries: after a reset (fork) the old
   nodes belong to queries the new epoch never saw, and some of them sit on
   the stacks of threads that do not exist in a forked child. */
static void
in_flight_forget(MeterObject *m)
{
    qm_node *node = m->in_flight.next;
    while (node != NULL && node != &m->in_flight) {
        qm_node *next = node->next;
        node->next = node->prev = NULL;
        node = next;
    }
    in_flight_init(m);
}

/* ------------------------------------------------------- the shared lock */

#ifdef QM_HAVE_SHM
static inline qm_shm_slot *
shm_slot_at(qm_shm_header *h, uint32_t index)
{
    return (qm_shm_slot *)((char *)h + h->header_size + (size_t)index * h->slot_size);
}

/* The process start time (clock ticks after boot, field 22 of
   /proc/<pid>/stat) and whether it is a zombie; 0 if unknown. */
static uint64_t
shm_start_ticks(uint32_t pid, int *zombie)
{
    char path[64], buf[1024];
    *zombie = 0;
    snprintf(path, sizeof(path), "/proc/%u/stat", (unsigned)pid);
    FILE *f = fopen(path, "re");
    if (f == NULL) {
        return 0;
    }
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    if (p == NULL || p[1] == '\0') {
        return 0;
    }
    p += 2;  /* field 3, the state */
    *zombie = (*p == 'Z' || *p == 'X');
    for (int field = 3; field < 22 && *p; field++) {
        p = strchr(p, ' ');
        if (p == NULL) {
            return 0;
        }
        p++;
    }
    return strtoull(p, NULL, 10);
}

/* Whether the process holding the lock with this token is gone: no such
   pid, a zombie, or a pid reused by a process that started later. */
static int
shm_owner_dead(uint64_t token)
{
    uint32_t pid = (uint32_t)(token >> 32);
    if (pid == 0) {
        return 1;
    }
    if (kill((pid_t)pid, 0) == -1 && errno == ESRCH) {
        return 1;
    }
    int zombie = 0;
    uint64_t ticks = shm_start_ticks(pid, &zombie);
    if (zombie) {
        return 1;
    }
    return ticks != 0 && (uint32_t)ticks != (uint32_t)token;
}

/* This process's token; made anew in a forked child (another pid). */
static uint64_t
shm_own_token(void)
{
    static uint32_t cached_pid = 0;
    static uint64_t cached_token = 0;
    uint32_t pid = (uint32_t)getpid();
    if (pid != cached_pid) {
        int zombie = 0;
        uint64_t ticks = shm_start_ticks(pid, &zombie);
        cached_token = ((uint64_t)pid << 32) | (uint32_t)ticks;
        cached_pid = pid;
    }
    return cached_token;
}

/* After taking the lock over from a dead owner: the service's concurrency
   is the sum of the slots', whatever update the owner left half-done. */
static void
shm_repair(qm_shm_header *h)
{
    int64_t concurrency = 0;
    for (uint32_t i = 0; i < h->slot_count; i++) {
        qm_shm_slot *s = shm_slot_at(h, i);
        if (s->state == 1 && s->c.concurrency > 0) {
            concurrency += s->c.concurrency;
        }
    }
    h->service.concurrency = concurrency;
    h->lock_steals += 1;
}

static void
shm_lock_slow(qm_shm_header *h, uint64_t me)
{
    unsigned spins = 0;
    int64_t checked = monotonic_ns();
    for (;;) {
        uint64_t expected = 0;
        if (atomic_load_explicit(&h->lock, memory_order_relaxed) == 0
            && atomic_compare_exchange_weak_explicit(&h->lock, &expected, me,
                                                     memory_order_acquire,
                                                     memory_order_relaxed)) {
            return;
        }
        if (++spins < 200) {
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif
            continue;
        }
        sched_yield();
        int64_t now = monotonic_ns();
        if (now - checked < 10000000) {  /* every 10 ms: is the owner alive? */
            continue;
        }
        checked = now;
        uint64_t owner = atomic_load_explicit(&h->lock, memory_order_relaxed);
        /* Our own token while we wait: left by this process's past (a
           thread that held it cannot exist, the GIL orders our sections). */
        if (owner != 0 && (owner == me || shm_owner_dead(owner))) {
            expected = owner;
            if (atomic_compare_exchange_strong_explicit(&h->lock, &expected, me,
                                                        memory_order_acquire,
                                                        memory_order_relaxed)) {
                shm_repair(h);
                return;
            }
        }
    }
}

static inline void
shm_lock(qm_shm_header *h, uint64_t me)
{
    uint64_t expected = 0;
    if (!atomic_compare_exchange_strong_explicit(&h->lock, &expected, me, memory_order_acquire,
                                                 memory_order_relaxed)) {
        shm_lock_slow(h, me);
    }
}

static inline void
shm_unlock(qm_shm_header *h)
{
    atomic_store_explicit(&h->lock, 0, memory_order_release);
}

/* begin and end on the service's counters and the slot's, under the lock.
   The slot's stamp never passes the service's: both advance to the same
   settled reading. */
static int64_t
shm_begin(MeterObject *m, int64_t now)
{
    qm_shm_header *h = m->shared;
    qm_shm_slot *s = m->slot;
    shm_lock(h, m->lock_token);
    now = settle(&h->service, now);
    advance(&h->service, now);
    h->service.concurrency += 1;
    advance(&s->c, now);
    s->c.concurrency += 1;
    if (in_flight_empty(m)) {
        s->oldest_ns = now;
        s->has_oldest = 1;
    }
    shm_unlock(h);
    return now;
}

/* Ends a query; the node is already unlinked, so the list's head is the
   process's oldest query still in flight. */
static uint64_t
shm_end(MeterObject *m, int64_t now, int64_t start, int error)
{
    qm_shm_header *h = m->shared;
    qm_shm_slot *s = m->slot;
    shm_lock(h, m->lock_token);
    now = settle(&h->service, now);
    (void)counters_end(&h->service, now, start, error);
    (void)counters_end(&s->c, now, start, error);
    if (in_flight_empty(m)) {
        s->has_oldest = 0;
    }
    else {
        s->oldest_ns = m->in_flight.next->start_ns;
    }
    shm_unlock(h);
    return elapsed_since(now, start);
}
#endif

/* One query of meter `m`, begun: its start (in the node, linked into the
   meter's list) and epoch.  -1, with the exception set, when the clock was
   interrupted: nothing was begun. */
static inline int
query_begin(MeterObject *m, qm_node *node, uint64_t *epoch)
{
    if (!qm_enabled) {
        node->start_ns = 0;
        *epoch = QM_UNCOUNTED;
        return 0;
    }
    int interrupted = 0;
    int64_t now = meter_clock(m, &interrupted);
    if (interrupted) {
        return -1;
    }
#ifdef QM_HAVE_SHM
    if (m->shared != NULL) {
        node->start_ns = shm_begin(m, now);
    }
    else
#endif
    {
        node->start_ns = counters_begin(&m->c, now);
    }
    node_link(m, node);
    *epoch = m->epoch;
    return 0;
}

/* Ends a query begun by query_begin; *elapsed (if given) gets its time.  A
   query whose meter was reset (fork) while it ran is not ended there: the new
   epoch never saw it begin.  -1, with the exception set, when the clock was
   interrupted: the query has ended all the same. */
static inline int
query_end(MeterObject *m, qm_node *node, uint64_t epoch, int error, uint64_t *elapsed)
{
    if (epoch == QM_UNCOUNTED) {
        if (elapsed != NULL) {
            *elapsed = 0;
        }
        return 0;
    }
    int interrupted = 0;
    int64_t now = meter_clock(m, &interrupted);
    uint64_t took;
    if (epoch == m->epoch) {
        node_unlink(node);
#ifdef QM_HAVE_SHM
        if (m->shared != NULL) {
            took = shm_end(m, now, node->start_ns, error);
        }
        else
#endif
        {
            took = counters_end(&m->c, now, node->start_ns, error);
        }
    }
    else {
        took = elapsed_since(now, node->start_ns);
    }
    if (elapsed != NULL) {
        *elapsed = took;
    }
    return interrupted ? -1 : 0;
}

static PyObject *
u128_to_pylong(qm_u128 value)
{
    if (value <= (qm_u128)UINT64_MAX) {
        return PyLong_FromUnsignedLongLong((unsigned long long)value);
    }
    PyObject *high = PyLong_FromUnsignedLongLong((unsigned long long)(value >> 64));
    PyObject *low = PyLong_FromUnsignedLongLong((unsigned long long)value);
    PyObject *shift = PyLong_FromLong(64);
    PyObject *shifted = NULL, *result = NULL;
    if (high && low && shift) {
        shifted = PyNumber_Lshift(high, shift);
    }
    if (shifted) {
        result = PyNumber_Or(shifted, low);
    }
    Py_XDECREF(high);
    Py_XDECREF(low);
    Py_XDECREF(shift);
    Py_XDECREF(shifted);
    return result;
}

static int check_dialect(PyObject *dialect);

#include "_statements.c"

static module_state *state_of_meter(MeterObject *m);

/* The statement of a query whose shape holds one as (dialect, sql, params)
   or (dialect, sql, params, cursor). */
static inline const statement_ref *
statement_of_tuple(PyObject *statement, statement_ref *st)
{
    if (statement == NULL) {
        return NULL;
    }
    st->dialect = PyTuple_GET_ITEM(statement, 0);
    st->sql = PyTuple_GET_ITEM(statement, 1);
    st->params = PyTuple_GET_ITEM(statement, 2);
    st->rows_from = PyTuple_GET_SIZE(statement) == 4 ? PyTuple_GET_ITEM(statement, 3) : NULL;
    return st;
}

static int
name_in(PyObject *name, const char *const *names)
{
    for (; *names != NULL; names++) {
        if (PyUnicode_CompareWithASCIIString(name, *names) == 0) {
            return 1;
        }
    }
    return 0;
}

/* Where a call's statement is: the cursor at args[layout & 3], the text
   after it, then the parameters unless layout & 4; the cursor's rowcount is
   read unless layout & 8 (a method that leaves it as it was).  0 is a DB-API
   method (cursor, sql, params, ...); 1 SQLAlchemy's do_execute called with
   its dialect first; 5 its do_execute_no_params (dialect, cursor, sql, context). */
#define QM_LAYOUT_CURSOR 3
#define QM_LAYOUT_NO_PARAMS 4
#define QM_LAYOUT_NO_ROWS 8

static int
check_layout(PyObject *layout, int *value)
{
    long v = PyLong_Check(layout) ? PyLong_AsLong(layout) : -1;
    if (v < 0 || v > 15) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "layout must be an int from 0 to 15");
        return -1;
    }
    *value = (int)v;
    return 0;
}

/* The statement of a DB-API call laid out as `layout` says: the shape of
   cursor.execute, executemany, callproc and of SQLAlchemy's do_execute; the
   cursor is where its rowcount is read.  Text and parameters passed by
   keyword are found by the names the drivers give them. */
static const statement_ref *
statement_of_call(PyObject *dialect, int layout, PyObject *const *args, Py_ssize_t nargs,
                  PyObject *kwnames, statement_ref *st)
{
    static const char *const sql_names[] = {"sql", "query", "operation", "statement",
                                            "sql_script", "procname", NULL};
    static const char *const params_names[] = {"parameters", "params", "args", "vars",
                                               "seq_of_parameters", "params_seq", "vars_list",
                                               NULL};
    Py_ssize_t at = layout & QM_LAYOUT_CURSOR;
    st->dialect = dialect;
    st->rows_from = nargs > at && !(layout & QM_LAYOUT_NO_ROWS) ? args[at] : NULL;
    st->sql = nargs > at + 1 ? args[at + 1] : NULL;
    st->params = nargs > at + 2 && !(layout & QM_LAYOUT_NO_PARAMS) ? args[at + 2] : NULL;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t i = 0; i < nkw && (st->sql == NULL || st->params == NULL); i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
        if (st->sql == NULL && name_in(name, sql_names)) {
            st->sql = args[nargs + i];
        }
        else if (st->params == NULL && name_in(name, params_names)) {
            st->params = args[nargs + i];
        }
    }
    return st;
}

static inline int
observing(MeterObject *m)
{
    return m->statements != NULL || m->sampling != NULL || m->observer != NULL
           || m->session_statements != NULL || m->session_sampling != NULL
           || qm_scopes_open > 0;
}

/* query_end, then the query observed (statement table, sampling, the
   observer) if the meter counted it and observes anything.  -1 with an
   exception set if the clock or the observing was interrupted; the query has
   ended all the same. */
static int
query_end_observed(MeterObject *m, qm_node *node, uint64_t epoch, int error,
                   uint64_t *elapsed_out, const statement_ref *st, PyObject *error_type)
{
    uint64_t elapsed = 0;
    int counted = epoch == m->epoch;
    int status = query_end(m, node, epoch, error, &elapsed);
    if (elapsed_out != NULL) {
        *elapsed_out = elapsed;
    }
    if (!counted || !observing(m)) {
        return status;
    }
    /* The class of the exception that ended the query, taken now: an
       interrupt while observing would be chained on top of it. */
    PyObject *ended_by = NULL;
    if (error && m->observer != NULL) {
        ended_by = Py_XNewRef(error_type != NULL ? error_type : PyErr_Occurred());
    }
    if (observe(m->statements, m->sampling, m->session_statements, m->session_sampling,
                m->session_focus, st, elapsed, error, error_type) < 0) {
        status = -1;
    }
    /* Read again: the observing above may have run code that replaced it. */
    if (m->observer != NULL && notify_observer(m->observer, st, elapsed, error, ended_by) < 0) {
        status = -1;
    }
    Py_XDECREF(ended_by);
    return status;
}

/* ------------------------------------------------------------ MeterCore */

/* Stops counting into a shared file (without settling its slot: that is the
   file's business) and lets go of the mapping. */
static void
meter_detach(MeterObject *m)
{
    if (m->shared != NULL) {
        m->shared = NULL;
        m->slot = NULL;
        PyBuffer_Release(&m->shared_view);
    }
}

/* tp_new sets up everything the hot path needs, so that a meter whose
   __init__ was skipped still counts (with the built-in clock). */
static PyObject *
meter_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwargs))
{
    PyObject *module = PyType_GetModuleByDef(type, &core_module);
    if (module == NULL) {
        return NULL;
    }
    module_state *state = PyModule_GetState(module);
    MeterObject *self = (MeterObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->token_type = (PyTypeObject *)Py_NewRef(state->token_type);
    self->tracker_type = (PyTypeObject *)Py_NewRef(state->tracker_type);
    self->timed_type = (PyTypeObject *)Py_NewRef(state->timed_type);
    self->clock = NULL;
    self->statements = NULL;
    self->sampling = NULL;
    self->observer = NULL;
    self->session_statements = NULL;
    self->session_sampling = NULL;
    self->session_focus = NULL;
    self->serial = next_serial++;
    self->epoch = 0;
    self->meter_id = 0;
    self->initialized = 0;
    self->shared = NULL;
    self->slot = NULL;
    self->lock_token = 0;
    in_flight_init(self);
    counters_start(&self->c, monotonic_ns());
    return (PyObject *)self;
}

static int
meter_init(MeterObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"clock", "meter_id", NULL};
    PyObject *clock = Py_None;
    PyObject *meter_id_obj = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O$O!:MeterCore", kwlist, &clock,
                                     &PyLong_Type, &meter_id_obj)) {
        return -1;
    }
    unsigned long long meter_id = 0;
    if (meter_id_obj != NULL) {
        meter_id = PyLong_AsUnsignedLongLong(meter_id_obj);
        if (meter_id == (unsigned long long)-1 && PyErr_Occurred()) {
            return -1;
        }
    }
    if (self->initialized) {
        PyErr_SetString(PyExc_RuntimeError, "a meter cannot be initialised twice");
        return -1;
    }
    if (clock != Py_None && !PyCallable_Check(clock)) {
        PyErr_Format(PyExc_TypeError,
                     "clock must be a callable returning int nanoseconds, or None, not %.200s",
                     Py_TYPE(clock)->tp_name);
        return -1;
    }
    self->initialized = 1;
    self->meter_id = (uint64_t)meter_id;
    Py_XSETREF(self->clock, clock == Py_None ? NULL : Py_NewRef(clock));
    int interrupted = 0;
    int64_t now = meter_clock(self, &interrupted);
    counters_start(&self->c, now);
    return interrupted ? -1 : 0;
}

static int
meter_traverse(MeterObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->clock);
    Py_VISIT(self->statements);
    Py_VISIT(self->sampling);
    Py_VISIT(self->observer);
    Py_VISIT(self->session_statements);
    Py_VISIT(self->session_sampling);
    Py_VISIT(self->session_focus);
    return 0;
}

static int
meter_clear(MeterObject *self)
{
    Py_CLEAR(self->clock);
    Py_CLEAR(self->statements);
    Py_CLEAR(self->sampling);
    Py_CLEAR(self->observer);
    Py_CLEAR(self->session_statements);
    Py_CLEAR(self->session_sampling);
    Py_CLEAR(self->session_focus);
    return 0;
}

static void
meter_dealloc(MeterObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    meter_clear(self);
    meter_detach(self);
    in_flight_forget(self);
    Py_CLEAR(self->token_type);
    Py_CLEAR(self->tracker_type);
    Py_CLEAR(self->timed_type);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyObject *
meter_begin(MeterObject *self, PyObject *Py_UNUSED(ignored))
{
    /* Allocate first: the critical section must not allocate or call Python. */
    TokenObject *token = PyObject_New(TokenObject, self->token_type);
    if (token == NULL) {
        return NULL;
    }
    token->serial = self->serial;
    token->ended = 0;
    token->node.next = token->node.prev = NULL;
    if (query_begin(self, &token->node, &token->epoch) < 0) {
        /* Nothing begun: the token must not be endable. */
        token->ended = 1;
        Py_DECREF(token);
        return NULL;
    }
    return (PyObject *)token;
}

static PyObject *
meter_end(MeterObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (nargs > 2) {
        PyErr_Format(PyExc_TypeError,
                     "end() takes at most 2 positional arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *token_obj = nargs >= 1 ? args[0] : NULL;
    PyObject *error_obj = nargs >= 2 ? args[1] : NULL;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
        if (token_obj == NULL && PyUnicode_CompareWithASCIIString(name, "token") == 0) {
            token_obj = args[nargs + i];
        }
        else if (error_obj == NULL && PyUnicode_CompareWithASCIIString(name, "error") == 0) {
            error_obj = args[nargs + i];
        }
        else {
            PyErr_Format(PyExc_TypeError,
                         "end() got an unexpected or repeated keyword argument '%U'", name);
            return NULL;
        }
    }
    if (token_obj == NULL) {
        PyErr_SetString(PyExc_TypeError, "end() missing required argument 'token'");
        return NULL;
    }
    if (!Py_IS_TYPE(token_obj, self->token_type)) {
        PyErr_Format(PyExc_TypeError,
                     "end() expects a token returned by begin(), not %.200s",
                     Py_TYPE(token_obj)->tp_name);
        return NULL;
    }
    int error = 0;
    if (error_obj != NULL) {
        error = PyObject_IsTrue(error_obj);
        if (error < 0) {
            return NULL;
        }
    }
    TokenObject *token = (TokenObject *)token_obj;
    if (token->serial != self->serial) {
        PyErr_SetString(PyExc_ValueError, "end() got a token that belongs to another meter");
        return NULL;
    }
    if (token->ended) {
        PyErr_SetString(PyExc_ValueError, "end() got a token that has already ended");
        return NULL;
    }
    /* Mark it before reading the clock: an injected clock runs Python code, so
       another thread could try to end the same token meanwhile. */
    token->ended = 1;
    uint64_t elapsed = 0;
    if (query_end_observed(self, &token->node, token->epoch, error, &elapsed, NULL, NULL) < 0) {
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(elapsed);
}

/* _read(cls): every counter at one instant and the meter's identity, as an
   instance of the tuple subclass `cls` (the Snapshot), built in one step: a
   snapshot is read often, and each intermediate tuple would cost as much as
   the reading itself. */
static PyObject *
meter_read(MeterObject *self, PyObject *cls_obj)
{
    PyTypeObject *cls = (PyTypeObject *)cls_obj;
    if (!PyType_Check(cls_obj) || !PyType_IsSubtype(cls, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "_read() needs a tuple subclass");
        return NULL;
    }

    int interrupted = 0;
    int64_t now = meter_clock(self, &interrupted);
    if (interrupted) {
        return NULL;
    }
    /* The critical section: catch up to `now` exactly as begin would, and
       commit it, as /proc/diskstats does on every read: a reading taken before
       this one but applied after it can then never hand back time reported
       here, and the counters stay monotonic. */
    qm_counters *c = &self->c;
#ifdef QM_HAVE_SHM
    if (self->shared != NULL) {
        c = &self->shared->service;
        shm_lock(self->shared, self->lock_token);
    }
#endif
    now = settle(c, now);
    advance(c, now);
    uint64_t uptime = (uint64_t)now - (uint64_t)c->start_ns;
    uint64_t busy = c->busy_ns;
    qm_u128 total = c->total_ns;
    uint64_t queries = c->queries;
    uint64_t errors = c->errors;
    int64_t concurrency = c->concurrency;
#ifdef QM_HAVE_SHM
    if (self->shared != NULL) {
        shm_unlock(self->shared);
    }
#endif
    int64_t wall = wall_ns();
    uint64_t meter_id = self->meter_id;
    /* End of the critical section: only now build Python objects. */

    PyObject *items[8] = {
        PyLong_FromUnsignedLongLong(uptime),
        PyLong_FromUnsignedLongLong(queries),
        PyLong_FromUnsignedLongLong(errors),
        PyLong_FromLongLong(concurrency),
        u128_to_pylong(total),
        PyLong_FromUnsignedLongLong(busy),
        PyLong_FromLongLong(wall),
        PyLong_FromUnsignedLongLong(meter_id),
    };
    PyObject *result = NULL;
    for (int i = 0; i < 8; i++) {
        if (items[i] == NULL) {
            goto done;
        }
    }
    result = cls->tp_alloc(cls, 8);
    if (result != NULL) {
        for (int i = 0; i < 8; i++) {
            PyTuple_SET_ITEM(result, i, items[i]);
            items[i] = NULL;
        }
    }
done:
    for (int i = 0; i < 8; i++) {
        Py_XDECREF(items[i]);
    }
    return result;
}


/* ------------------------------------------------- the shared file's API */

/* The oldest query in flight: its age in ns, or None.  For a shared meter,
   the oldest of every process attached to the file. */
static PyObject *
meter_oldest_in_flight(MeterObject *self, PyObject *Py_UNUSED(ignored))
{
    int interrupted = 0;
    int64_t now = meter_clock(self, &interrupted);
    if (interrupted) {
        return NULL;
    }
    int found = 0;
    int64_t oldest = 0;
#ifdef QM_HAVE_SHM
    if (self->shared != NULL) {
        qm_shm_header *h = self->shared;
        shm_lock(h, self->lock_token);
        for (uint32_t i = 0; i < h->slot_count; i++) {
            qm_shm_slot *s = shm_slot_at(h, i);
            if (s->state == 1 && s->has_oldest && s->c.concurrency > 0
                && (!found || s->oldest_ns < oldest)) {
                oldest = s->oldest_ns;
                found = 1;
            }
        }
        shm_unlock(h);
    }
    else
#endif
    if (!in_flight_empty(self)) {
        oldest = self->in_flight.next->start_ns;
        found = 1;
    }
    if (!found) {
        Py_RETURN_NONE;
    }
    if (now == QM_NO_READING) {
        now = self->c.stamp_ns;
    }
    return PyLong_FromUnsignedLongLong(elapsed_since(now, oldest));
}

#ifdef QM_HAVE_SHM
/* The header of a mapping laid out as a shared file for this core, with
   `view` held; NULL with ValueError when it is not one (the Python side
   checks the file first and explains; this guards the memory). */
static qm_shm_header *
shm_header_of(PyObject *mapping, Py_buffer *view)
{
    if (PyObject_GetBuffer(mapping, view, PyBUF_WRITABLE) < 0) {
        return NULL;
    }
    qm_shm_header *h = (qm_shm_header *)view->buf;
    if (view->len < QM_SHM_HEADER_SIZE || ((uintptr_t)view->buf & 63) != 0
        || memcmp(h->magic, "QMSHARED", 8) != 0 || h->version != QM_SHM_VERSION
        || h->header_size != QM_SHM_HEADER_SIZE || h->slot_size != QM_SHM_SLOT_SIZE
        || h->lock_protocol != QM_SHM_PROTOCOL_ATOMIC
        || h->file_size != (uint64_t)view->len
        || h->file_size != (uint64_t)h->header_size + (uint64_t)h->slot_count * h->slot_size) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, "not a shared meter mapping of the C core's layout");
        return NULL;
    }
    return h;
}

static int
shm_ints(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want, const char *name,
            long long *out)
{
    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd arguments (%zd given)", name, want, nargs);
        return -1;
    }
    for (Py_ssize_t i = 2; i < nargs; i++) {
        out[i - 2] = PyLong_AsLongLong(args[i]);
        if (out[i - 2] == -1 && PyErr_Occurred()) {
            return -1;
        }
    }
    return 0;
}


/* _share(mapping, fd, slot, meter_id): count into the shared file's service
   counters and slot `slot` (claimed by _shared_claim) from now on; queries in
   flight before go inert, as after _reset. */
static PyObject *
meter_share(MeterObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    long long ints[2];
    if (shm_ints(args, nargs, 4, "_share", ints) < 0) {
        return NULL;
    }
    if (self->clock != NULL) {
        PyErr_SetString(PyExc_ValueError, "a shared meter reads the built-in clock only");
        return NULL;
    }
    Py_buffer view;
    qm_shm_header *h = shm_header_of(args[0], &view);
    if (h == NULL) {
        return NULL;
    }
    if (ints[0] < 0 || (unsigned long long)ints[0] >= h->slot_count
        || shm_slot_at(h, (uint32_t)ints[0])->state != 1) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "_share() needs a slot taken by _shared_claim()");
        return NULL;
    }
    meter_detach(self);
    in_flight_forget(self);
    self->shared_view = view;
    self->shared = h;
    self->slot = shm_slot_at(h, (uint32_t)ints[0]);
    self->lock_token = shm_own_token();
    self->epoch += 1;
    self->meter_id = (uint64_t)ints[1];
    Py_RETURN_NONE;
}

/* _shared_claim(mapping, fd, pid, start_ticks, wall_ns) -> (slot, generation)
   or None when every slot is taken. */
static PyObject *
module_shared_claim(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    long long ints[3];
    if (shm_ints(args, nargs, 5, "_shared_claim", ints) < 0) {
        return NULL;
    }
    Py_buffer view;
    qm_shm_header *h = shm_header_of(args[0], &view);
    if (h == NULL) {
        return NULL;
    }
    int64_t now = monotonic_ns();
    long long found = -1;
    uint64_t generation = 0;
    shm_lock(h, shm_own_token());
    now = settle(&h->service, now);
    advance(&h->service, now);
    for (uint32_t i = 0; i < h->slot_count; i++) {
        qm_shm_slot *s = shm_slot_at(h, i);
        if (s->state == 0) {
            memset(s, 0, sizeof(*s));
            s->pid = (uint32_t)ints[0];
            s->start_ticks = (uint64_t)ints[1];
            s->opened_wall_ns = (int64_t)ints[2];
            s->generation = generation = ++h->claims;
            counters_start(&s->c, now);
            s->state = 1;
            found = i;
            break;
        }
    }
    shm_unlock(h);
    PyBuffer_Release(&view);
    if (found < 0) {
        Py_RETURN_NONE;
    }
    return Py_BuildValue("(LK)", found, (unsigned long long)generation);
}

/* _shared_settle(mapping, fd, slot, generation, dead) -> int: frees the slot
   if it is still that generation's, its queries in flight ended now as errors
   (counted as reaped if `dead`); how many there were, -1 if the slot had
   been settled already. */
static PyObject *
module_shared_settle(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    long long ints[3];
    if (shm_ints(args, nargs, 5, "_shared_settle", ints) < 0) {
        return NULL;
    }
    Py_buffer view;
    qm_shm_header *h = shm_header_of(args[0], &view);
    if (h == NULL) {
        return NULL;
    }
    if (ints[0] < 0 || (unsigned long long)ints[0] >= h->slot_count) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_IndexError, "slot index out of range");
        return NULL;
    }
    int64_t now = monotonic_ns();
    long long settled = -1;
    qm_shm_slot *s = shm_slot_at(h, (uint32_t)ints[0]);
    shm_lock(h, shm_own_token());
    if (s->state == 1 && s->generation == (uint64_t)ints[1]) {
        now = settle(&h->service, now);
        advance(&h->service, now);
        advance(&s->c, now);
        int64_t n = s->c.concurrency > 0 ? s->c.concurrency : 0;
        h->service.concurrency -= n;
        if (h->service.concurrency < 0) {
            h->service.concurrency = 0;
        }
        h->service.queries += (uint64_t)n;
        h->service.errors += (uint64_t)n;
        if (ints[2]) {
            h->reaped_slots += 1;
            h->reaped_queries += (uint64_t)n;
        }
        s->state = 0;
        s->has_oldest = 0;
        settled = n;
    }
    shm_unlock(h);
    PyBuffer_Release(&view);
    return PyLong_FromLongLong(settled);
}

typedef struct {
    uint32_t index, pid;
    uint64_t start_ticks, generation;
    int64_t opened_wall_ns, oldest_ns;
    int has_oldest;
    uint64_t uptime, queries, errors, busy;
    int64_t concurrency;
    qm_u128 total;
} qm_slot_copy;

static PyObject *
reading_tuple(uint64_t uptime, uint64_t queries, uint64_t errors, int64_t concurrency,
              qm_u128 total, uint64_t busy, int64_t wall, uint64_t meter_id)
{
    PyObject *total_obj = u128_to_pylong(total);
    if (total_obj == NULL) {
        return NULL;
    }
    return Py_BuildValue("(KKKLNKLK)", (unsigned long long)uptime, (unsigned long long)queries,
                         (unsigned long long)errors, (long long)concurrency, total_obj,
                         (unsigned long long)busy, (long long)wall,
                         (unsigned long long)meter_id);
}

/* _shared_read(mapping, fd) -> (service, slots, (lock_steals, reaped_slots,
   reaped_queries)): the service's reading and every taken slot's, all at
   one instant, each caught up to it.  A reading is (uptime_ns, queries,
   errors, concurrency, total_ns, busy_ns, wall_ns, meter_id); a slot is
   (index, pid, start_ticks, generation, opened_wall_ns, oldest_age_ns or
   None, reading). */
static PyObject *
module_shared_read(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    long long ints[1];
    if (shm_ints(args, nargs, 2, "_shared_read", ints) < 0) {
        return NULL;
    }
    Py_buffer view;
    qm_shm_header *h = shm_header_of(args[0], &view);
    if (h == NULL) {
        return NULL;
    }
    qm_slot_copy *copies = PyMem_Malloc(sizeof(qm_slot_copy) * (h->slot_count + 1));
    if (copies == NULL) {
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    uint32_t taken = 0;
    int64_t now = monotonic_ns();
    shm_lock(h, shm_own_token());
    now = settle(&h->service, now);
    advance(&h->service, now);
    qm_counters service = h->service;
    uint64_t meter_id = h->meter_id;
    uint64_t extras[3] = {h->lock_steals, h->reaped_slots, h->reaped_queries};
    for (uint32_t i = 0; i < h->slot_count; i++) {
        qm_shm_slot *s = shm_slot_at(h, i);
        if (s->state != 1) {
            continue;
        }
        advance(&s->c, now);
        qm_slot_copy *c = &copies[taken++];
        c->index = i;
        c->pid = s->pid;
        c->start_ticks = s->start_ticks;
        c->generation = s->generation;
        c->opened_wall_ns = s->opened_wall_ns;
        c->has_oldest = s->has_oldest && s->c.concurrency > 0;
        c->oldest_ns = s->oldest_ns;
        c->uptime = (uint64_t)now - (uint64_t)s->c.start_ns;
        c->queries = s->c.queries;
        c->errors = s->c.errors;
        c->busy = s->c.busy_ns;
        c->concurrency = s->c.concurrency;
        c->total = s->c.total_ns;
    }
    shm_unlock(h);
    PyBuffer_Release(&view);
    int64_t wall = wall_ns();

    PyObject *result = NULL, *slots = NULL;
    PyObject *reading = reading_tuple((uint64_t)now - (uint64_t)service.start_ns, service.queries,
                                      service.errors, service.concurrency, service.total_ns,
                                      service.busy_ns, wall, meter_id);
    if (reading == NULL || (slots = PyTuple_New(taken)) == NULL) {
        goto done;
    }
    for (uint32_t k = 0; k < taken; k++) {
        qm_slot_copy *c = &copies[k];
        /* Each slot's readings are of its own: an identity of the file, the
           slot and the generation. */
        uint64_t slot_id = (meter_id ^ (c->generation * 0x9E3779B97F4A7C15ULL)) & INT64_MAX;
        PyObject *own = reading_tuple(c->uptime, c->queries, c->errors, c->concurrency, c->total,
                                      c->busy, wall, slot_id);
        PyObject *age = c->has_oldest
                            ? PyLong_FromUnsignedLongLong(elapsed_since(now, c->oldest_ns))
                            : Py_NewRef(Py_None);
        PyObject *item = NULL;
        if (own != NULL && age != NULL) {
            item = Py_BuildValue("(IIKKLNN)", c->index, c->pid,
                                 (unsigned long long)c->start_ticks,
                                 (unsigned long long)c->generation, (long long)c->opened_wall_ns,
                                 age, own);
        }
        else {
            Py_XDECREF(own);
            Py_XDECREF(age);
        }
        if (item == NULL) {
            goto done;
        }
        PyTuple_SET_ITEM(slots, k, item);
    }
    result = Py_BuildValue("(OO(KKK))", reading, slots, (unsigned long long)extras[0],
                           (unsigned long long)extras[1], (unsigned long long)extras[2]);
done:
    Py_XDECREF(reading);
    Py_XDECREF(slots);
    PyMem_Free(copies);
    return result;
}
#endif

static PyObject *
meter_reset(MeterObject *self, PyObject *meter_id_obj)
{
    if (!PyLong_Check(meter_id_obj)) {
        PyErr_SetString(PyExc_TypeError, "meter_id must be an int");
        return NULL;
    }
    unsigned long long meter_id = PyLong_AsUnsignedLongLong(meter_id_obj);
    if (meter_id == (unsigned long long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    int interrupted = 0;
    int64_t now = meter_clock(self, &interrupted);
    meter_detach(self);
    in_flight_forget(self);
    counters_start(&self->c, now);
    self->epoch += 1;
    self->meter_id = (uint64_t)meter_id;
    if (interrupted) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
meter_get_meter_id(MeterObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLongLong(self->meter_id);
}

static PyGetSetDef meter_getset[] = {
    {"meter_id", (getter)meter_get_meter_id, NULL,
     PyDoc_STR("Identity of this meter, stamped on its readings; new after fork."), NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyObject *
meter_track(MeterObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"sql", NULL};
    PyObject *sql = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O:track", kwlist, &sql)) {
        return NULL;
    }
    if (sql != Py_None && !PyUnicode_Check(sql)) {
        PyErr_Format(PyExc_TypeError, "sql must be a str or None, not %.200s",
                     Py_TYPE(sql)->tp_name);
        return NULL;
    }
    TrackerObject *tracker = PyObject_GC_New(TrackerObject, self->tracker_type);
    if (tracker == NULL) {
        return NULL;
    }
    tracker->meter = (MeterObject *)Py_NewRef(self);
    tracker->node.next = tracker->node.prev = NULL;
    tracker->node.start_ns = 0;
    tracker->epoch = 0;
    tracker->elapsed_ns = 0;
    tracker->has_elapsed = 0;
    tracker->entered = 0;
    tracker->sql = sql == Py_None ? NULL : Py_NewRef(sql);
    tracker->dialect = NULL;
    PyObject_GC_Track(tracker);
    return (PyObject *)tracker;
}

/* _track_statement(sql, dialect): track(sql) with the dialect of its text. */
static PyObject *
meter_track_statement(MeterObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_track_statement() takes sql and dialect");
        return NULL;
    }
    if (check_dialect(args[1]) < 0) {
        return NULL;
    }
    PyObject *call_args = PyTuple_Pack(1, args[0]);
    if (call_args == NULL) {
        return NULL;
    }
    TrackerObject *tracker = (TrackerObject *)meter_track(self, call_args, NULL);
    Py_DECREF(call_args);
    if (tracker != NULL && args[1] != Py_None) {
        tracker->dialect = Py_NewRef(args[1]);
    }
    return (PyObject *)tracker;
}

static PyObject *timed_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf,
                                  PyObject *kwnames);

static PyObject *
meter_timed(MeterObject *self, PyObject *func)
{
    if (!PyCallable_Check(func)) {
        PyErr_Format(PyExc_TypeError, "cannot track %.200s: it is not callable",
                     Py_TYPE(func)->tp_name);
        return NULL;
    }
    TimedObject *timed = PyObject_GC_New(TimedObject, self->timed_type);
    if (timed == NULL) {
        return NULL;
    }
    timed->meter = (MeterObject *)Py_NewRef(self);
    timed->func = Py_NewRef(func);
    timed->func_vectorcall = PyVectorcall_Function(func);
    timed->dialect = NULL;
    timed->statement = 0;
    timed->layout = 0;
    timed->dict = NULL;
    timed->weakreflist = NULL;
    timed->vectorcall = timed_vectorcall;
    PyObject_GC_Track(timed);
    return (PyObject *)timed;
}

static int
check_dialect(PyObject *dialect)
{
    if (dialect != Py_None && !PyUnicode_CheckExact(dialect)) {
        PyErr_Format(PyExc_TypeError, "dialect must be a str or None, not %.200s",
                     Py_TYPE(dialect)->tp_name);
        return -1;
    }
    return 0;
}

/* _timed_statement(func, dialect, layout=0): _timed for a method whose calls
   hold a statement where `layout` says: each call is also observed under it. */
static PyObject *
meter_timed_statement(MeterObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 2 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "_timed_statement() takes func, dialect and layout");
        return NULL;
    }
    int layout = 0;
    if (check_dialect(args[1]) < 0 || (nargs == 3 && check_layout(args[2], &layout) < 0)) {
        return NULL;
    }
    TimedObject *timed = (TimedObject *)meter_timed(self, args[0]);
    if (timed != NULL) {
        timed->dialect = Py_NewRef(args[1]);
        timed->statement = 1;
        timed->layout = layout;
    }
    return (PyObject *)timed;
}

/* _call(func, /, *args, **kwargs): one call, counted as one query.  For hooks
   that learn the meter only at call time (looked up per connection). */
static PyObject *
meter_call(MeterObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError, "_call() missing required argument 'func'");
        return NULL;
    }
    qm_node node;
    uint64_t epoch;
    if (query_begin(self, &node, &epoch) < 0) {
        return NULL;
    }
    PyObject *result = PyObject_Vectorcall(args[0], args + 1, (size_t)(nargs - 1), kwnames);
    if (query_end_observed(self, &node, epoch, result == NULL, NULL, NULL, NULL) < 0) {
        Py_XDECREF(result);
        return NULL;
    }
    return result;
}

/* _call_statement(dialect, layout, func, /, *args, **kwargs): _call for a
   call whose statement is where `layout` says, also observed under it. */
static PyObject *
meter_call_statement(MeterObject *self, PyObject *const *args, Py_ssize_t nargs,
                     PyObject *kwnames)
{
    if (nargs < 3) {
        PyErr_SetString(PyExc_TypeError, "_call_statement() missing required arguments");
        return NULL;
    }
    PyObject *dialect = args[0];
    int layout;
    if (check_dialect(dialect) < 0 || check_layout(args[1], &layout) < 0) {
        return NULL;
    }
    qm_node node;
    uint64_t epoch;
    if (query_begin(self, &node, &epoch) < 0) {
        return NULL;
    }
    PyObject *const *call_args = args + 3;
    Py_ssize_t call_nargs = nargs - 3;
    PyObject *result = PyObject_Vectorcall(args[2], call_args, (size_t)call_nargs, kwnames);
    statement_ref st;
    const statement_ref *stp = NULL;
    if (observing(self)) {
        stp = statement_of_call(dialect, layout, call_args, call_nargs, kwnames, &st);
    }
    if (query_end_observed(self, &node, epoch, result == NULL, NULL, stp, NULL) < 0) {
        Py_XDECREF(result);
        return NULL;
    }
    return result;
}

/* _observe_session(statements, sampling, focus): a profiling session's own
   table and sampling, for the queries of scopes whose focus set holds
   `focus` (None: every query); all None: no session. */
static PyObject *
meter_observe_session(MeterObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "_observe_session() takes statements, sampling and focus");
        return NULL;
    }
    module_state *state = state_of_meter(self);
    if (state == NULL) {
        return NULL;
    }
    if (args[0] != Py_None && !Py_IS_TYPE(args[0], state->statements_type)) {
        PyErr_SetString(PyExc_TypeError, "statements must be a Statements or None");
        return NULL;
    }
    if (args[1] != Py_None && !Py_IS_TYPE(args[1], state->sampling_type)) {
        PyErr_SetString(PyExc_TypeError, "sampling must be a Sampling or None");
        return NULL;
    }
    Py_XSETREF(self->session_statements, args[0] == Py_None ? NULL : Py_NewRef(args[0]));
    Py_XSETREF(self->session_sampling, args[1] == Py_None ? NULL : Py_NewRef(args[1]));
    Py_XSETREF(self->session_focus, args[2] == Py_None ? NULL : Py_NewRef(args[2]));
    Py_RETURN_NONE;
}

/* _observe(statements, sampling, observer): what the meter observes of each
   query it counts from now on (None: nothing). */
static PyObject *
meter_observe(MeterObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "_observe() takes statements, sampling and observer");
        return NULL;
    }
    module_state *state = state_of_meter(self);
    if (state == NULL) {
        return NULL;
    }
    if (args[0] != Py_None && !Py_IS_TYPE(args[0], state->statements_type)) {
        PyErr_SetString(PyExc_TypeError, "statements must be a Statements or None");
        return NULL;
    }
    if (args[1] != Py_None && !Py_IS_TYPE(args[1], state->sampling_type)) {
        PyErr_SetString(PyExc_TypeError, "sampling must be a Sampling or None");
        return NULL;
    }
    if (args[2] != Py_None && !PyCallable_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "observer must be callable or None");
        return NULL;
    }
    Py_XSETREF(self->statements, args[0] == Py_None ? NULL : Py_NewRef(args[0]));
    Py_XSETREF(self->sampling, args[1] == Py_None ? NULL : Py_NewRef(args[1]));
    Py_XSETREF(self->observer, args[2] == Py_None ? NULL : Py_NewRef(args[2]));
    Py_RETURN_NONE;
}

static PyObject *meter_awaiting(MeterObject *self, PyObject *const *args, Py_ssize_t nargs);
static PyObject *meter_iterating(MeterObject *self, PyObject *const *args, Py_ssize_t nargs);
static PyObject *meter_async_iterating(MeterObject *self, PyObject *const *args,
                                       Py_ssize_t nargs);

/* A shape's arguments: (target, statement=None), the statement a tuple
   (dialect, sql, params) or (dialect, sql, params, cursor), the cursor's
   rowcount read at the end.  *statement is NULL for None.  -1 on bad input. */
static int
shape_arguments(const char *name, PyObject *const *args, Py_ssize_t nargs,
                PyObject **target, PyObject **statement)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_Format(PyExc_TypeError, "%s() takes 1 or 2 positional arguments (%zd given)",
                     name, nargs);
        return -1;
    }
    *target = args[0];
    *statement = NULL;
    if (nargs == 2 && args[1] != Py_None) {
        PyObject *st = args[1];
        if (!PyTuple_CheckExact(st) || PyTuple_GET_SIZE(st) < 3 || PyTuple_GET_SIZE(st) > 4) {
            PyErr_Format(PyExc_TypeError,
                         "%s(): statement must be a tuple (dialect, sql, params[, cursor]) "
                         "or None", name);
            return -1;
        }
        if (check_dialect(PyTuple_GET_ITEM(st, 0)) < 0) {
            return -1;
        }
        *statement = st;
    }
    return 0;
}
static PyObject *meter_occupancies(MeterObject *self, PyObject *count);

static PyMethodDef meter_methods[] = {
    {"begin", (PyCFunction)meter_begin, METH_NOARGS,
     PyDoc_STR("begin() -> token\n\nStart a query; pass the token to end().")},
    {"end", (PyCFunction)(void (*)(void))meter_end, METH_FASTCALL | METH_KEYWORDS,
     PyDoc_STR("end(token, error=False) -> int\n\n"
               "End the query that begin() returned `token` for; return its elapsed ns.")},
    {"track", (PyCFunction)(void (*)(void))meter_track, METH_VARARGS | METH_KEYWORDS,
     PyDoc_STR("track(sql=None) -> context manager counting its block as one query.")},
    {"_track_statement", (PyCFunction)(void (*)(void))meter_track_statement, METH_FASTCALL,
     PyDoc_STR("_track_statement(sql, dialect) -> track(sql) with the dialect of its text.")},
    {"_timed", (PyCFunction)meter_timed, METH_O,
     PyDoc_STR("_timed(func) -> callable counting each call of func as one query.")},
    {"_call", (PyCFunction)(void (*)(void))meter_call, METH_FASTCALL | METH_KEYWORDS,
     PyDoc_STR("_call(func, /, *args, **kwargs) -> result\n\n"
               "Call func(*args, **kwargs), counted as one query.")},
    {"_timed_statement", (PyCFunction)(void (*)(void))meter_timed_statement, METH_FASTCALL,
     PyDoc_STR("_timed_statement(func, dialect, layout=0) -> callable\n\n"
               "_timed for a method whose calls hold a statement where layout says "
               "(0: cursor, sql, params): each call is also observed under it.")},
    {"_call_statement", (PyCFunction)(void (*)(void))meter_call_statement,
     METH_FASTCALL | METH_KEYWORDS,
     PyDoc_STR("_call_statement(dialect, layout, func, /, *args, **kwargs) -> result\n\n"
               "Call func(*args, **kwargs), counted as one query and observed under the "
               "statement where layout says (0: cursor, sql, params).")},
    {"_observe_session", (PyCFunction)(void (*)(void))meter_observe_session, METH_FASTCALL,
     PyDoc_STR("_observe_session(statements, sampling, focus) -> None\n\n"
               "A profiling session's own table and sampling, for the queries of scopes "
               "whose focus holds focus (None: every query).")},
    {"_observe", (PyCFunction)(void (*)(void))meter_observe, METH_FASTCALL,
     PyDoc_STR("_observe(statements, sampling, observer) -> None\n\n"
               "What the meter observes of each query it counts from now on (None: nothing);\n"
               "observer(sql, dialect, elapsed_ns, error, error_type) is called after each.")},
    {"_awaiting", (PyCFunction)(void (*)(void))meter_awaiting, METH_FASTCALL,
     PyDoc_STR("_awaiting(awaitable, statement=None, /) -> awaitable counted as one query "
               "from its first step to its end.")},
    {"_iterating", (PyCFunction)(void (*)(void))meter_iterating, METH_FASTCALL,
     PyDoc_STR("_iterating(iterator, statement=None, /) -> iterator counted as one query "
               "from the first item to its end.")},
    {"_async_iterating", (PyCFunction)(void (*)(void))meter_async_iterating, METH_FASTCALL,
     PyDoc_STR("_async_iterating(iterator, statement=None, /) -> async iterator counted as "
               "one query, first item to end.")},
    {"_occupancies", (PyCFunction)meter_occupancies, METH_O,
     PyDoc_STR("_occupancies(count) -> Occupancies: `count` occupancy counters on this "
               "meter's clock.")},
    {"_read", (PyCFunction)meter_read, METH_O,
     PyDoc_STR("_read(cls) -> cls((uptime_ns, queries, errors, concurrency, "
               "total_ns, busy_ns, wall_ns, meter_id))")},
    {"oldest_in_flight_ns", (PyCFunction)meter_oldest_in_flight, METH_NOARGS,
     PyDoc_STR("oldest_in_flight_ns() -> int | None\n\n"
               "Age in ns of the oldest query still in flight (of every process, for a "
               "shared meter); None when none is.")},
#ifdef QM_HAVE_SHM
    {"_share", (PyCFunction)(void (*)(void))meter_share, METH_FASTCALL,
     PyDoc_STR("_share(mapping, fd, slot, meter_id) -> None\n\n"
               "Count into a shared file's service counters and slot from now on.")},
#endif
    {"_reset", (PyCFunction)meter_reset, METH_O,
     PyDoc_STR("_reset(meter_id) -> None\n\n"
               "Start again from zero under a new identity; tokens from before go inert.")},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef meter_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(MeterObject, weakreflist), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot meter_slots[] = {
    {Py_tp_doc, (void *)PyDoc_STR("MeterCore(clock=None, *, meter_id=0)\n\nThe counters of one meter.")},
    {Py_tp_new, (void *)meter_new},
    {Py_tp_init, (void *)meter_init},
    {Py_tp_dealloc, (void *)meter_dealloc},
    {Py_tp_traverse, (void *)meter_traverse},
    {Py_tp_clear, (void *)meter_clear},
    {Py_tp_methods, meter_methods},
    {Py_tp_members, meter_members},
    {Py_tp_getset, meter_getset},
    {0, NULL},
};

static PyType_Spec meter_spec = {
    .name = "querymeter.core._c.MeterCore",
    .basicsize = sizeof(MeterObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = meter_slots,
};

/* ---------------------------------------------------------------- Token */

static void
token_dealloc(TokenObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    /* A token dropped without end(): its query stays in the concurrency, as
       it always did, but its node must leave the list before its memory goes. */
    node_unlink(&self->node);
    PyObject_Free(self);
    Py_DECREF(tp);
}

static PyObject *
token_repr(TokenObject *self)
{
    return PyUnicode_FromFormat("<querymeter token started at %lld ns%s>",
                                (long long)self->node.start_ns, self->ended ? ", ended" : "");
}

static PyType_Slot token_slots[] = {
    {Py_tp_doc, (void *)PyDoc_STR("A query in flight, returned by begin() and passed to end().")},
    {Py_tp_dealloc, (void *)token_dealloc},
    {Py_tp_repr, (void *)token_repr},
    {0, NULL},
};

/* Not a GC type: a token holds no references, so it cannot be part of a cycle. */
static PyType_Spec token_spec = {
    .name = "querymeter.core._c.Token",
    .basicsize = sizeof(TokenObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = token_slots,
};

/* -------------------------------------------------------------- Tracker */

static int
tracker_traverse(TrackerObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->meter);
    Py_VISIT(self->sql);
    Py_VISIT(self->dialect);
    return 0;
}

static int
tracker_clear(TrackerObject *self)
{
    Py_CLEAR(self->meter);
    Py_CLEAR(self->sql);
    Py_CLEAR(self->dialect);
    return 0;
}

static void
tracker_dealloc(TrackerObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    node_unlink(&self->node);
    tracker_clear(self);
    PyObject_GC_Del(self);
    Py_DECREF(tp);
}

static PyObject *
tracker_enter(TrackerObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->entered) {
        PyErr_SetString(PyExc_RuntimeError,
                        "this track() block is already running; use a new track() for each block");
        return NULL;
    }
    MeterObject *m = self->meter;
    if (m == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "this tracker has been cleared");
        return NULL;
    }
    /* State changes before the clock runs, as in end(). */
    self->entered = 1;
    self->has_elapsed = 0;
    if (query_begin(m, &self->node, &self->epoch) < 0) {
        self->entered = 0;
        return NULL;
    }
    return Py_NewRef(self);
}

static PyObject *
tracker_exit(TrackerObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError,
                     "__exit__() takes exactly 3 arguments (%zd given)", nargs);
        return NULL;
    }
    if (!self->entered || self->meter == NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "__exit__() called on a track() block that is not running");
        return NULL;
    }
    int error = args[0] != Py_None;
    self->entered = 0;
    statement_ref st = {self->dialect, self->sql, NULL, NULL};
    int status = query_end_observed(self->meter, &self->node, self->epoch, error,
                                    &self->elapsed_ns, &st, error ? args[0] : NULL);
    self->has_elapsed = 1;
    if (status < 0) {
        return NULL;
    }
    /* Never suppress the block's exception. */
    Py_RETURN_FALSE;
}

static PyObject *
tracker_get_elapsed(TrackerObject *self, void *Py_UNUSED(closure))
{
    if (!self->has_elapsed) {
        Py_RETURN_NONE;
    }
    return PyLong_FromUnsignedLongLong(self->elapsed_ns);
}

static PyMethodDef tracker_methods[] = {
    {"__enter__", (PyCFunction)tracker_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))tracker_exit, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef tracker_getset[] = {
    {"elapsed_ns", (getter)tracker_get_elapsed, NULL,
     PyDoc_STR("Elapsed ns of the block once it has ended, else None."), NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot tracker_slots[] = {
    {Py_tp_doc, (void *)PyDoc_STR("Counts a `with` block as one query; an exception counts as an error.")},
    {Py_tp_dealloc, (void *)tracker_dealloc},
    {Py_tp_traverse, (void *)tracker_traverse},
    {Py_tp_clear, (void *)tracker_clear},
    {Py_tp_methods, tracker_methods},
    {Py_tp_getset, tracker_getset},
    {0, NULL},
};

static PyType_Spec tracker_spec = {
    .name = "querymeter.core._c.Tracker",
    .basicsize = sizeof(TrackerObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = tracker_slots,
};

/* ---------------------------------------------------------------- Timed */

/* The call wrapper the hooks install as a class attribute.  It binds like a
   function (a method descriptor, so `cur.execute(...)` calls it with the
   cursor first and no bound-method object) and forwards the caller's
   argument array untouched: a generator passed to executemany reaches the
   driver unconsumed, and the driver's exception is returned as is. */
static PyObject *
timed_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    TimedObject *self = (TimedObject *)op;
    if (!qm_enabled) {
        /* The kill switch: the driver's own call, and nothing else. */
        return self->func_vectorcall != NULL
                   ? self->func_vectorcall(self->func, args, nargsf, kwnames)
                   : PyObject_Vectorcall(self->func, args, nargsf, kwnames);
    }
    MeterObject *m = self->meter;
    qm_node node;
    uint64_t epoch;
    if (query_begin(m, &node, &epoch) < 0) {
        return NULL;
    }

    PyObject *result;
    if (self->func_vectorcall != NULL) {
        result = self->func_vectorcall(self->func, args, nargsf, kwnames);
    }
    else {
        result = PyObject_Vectorcall(self->func, args, nargsf, kwnames);
    }

    statement_ref st;
    const statement_ref *stp = NULL;
    if (self->statement && observing(m)) {
        stp = statement_of_call(self->dialect, self->layout, args, PyVectorcall_NARGS(nargsf),
                                kwnames, &st);
    }
    if (query_end_observed(m, &node, epoch, result == NULL, NULL, stp, NULL) < 0) {
        Py_XDECREF(result);
        return NULL;
    }
    return result;
}

static PyObject *
timed_descr_get(PyObject *self, PyObject *obj, PyObject *Py_UNUSED(type))
{
    if (obj == NULL || obj == Py_None) {
        return Py_NewRef(self);
    }
    return PyMethod_New(self, obj);
}

static int
timed_traverse(TimedObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->meter);
    Py_VISIT(self->func);
    Py_VISIT(self->dialect);
    Py_VISIT(self->dict);
    return 0;
}

static int
timed_clear(TimedObject *self)
{
    Py_CLEAR(self->meter);
    Py_CLEAR(self->func);
    Py_CLEAR(self->dialect);
    Py_CLEAR(self->dict);
    return 0;
}

static void
timed_dealloc(TimedObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    timed_clear(self);
    PyObject_GC_Del(self);
    Py_DECREF(tp);
}

static PyObject *
timed_repr(TimedObject *self)
{
    return PyUnicode_FromFormat("<querymeter tracked %R>", self->func);
}

static PyGetSetDef timed_getset[] = {
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef timed_members[] = {
    {"__dictoffset__", T_PYSSIZET, offsetof(TimedObject, dict), READONLY, NULL},
    {"__weaklistoffset__", T_PYSSIZET, offsetof(TimedObject, weakreflist), READONLY, NULL},
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(TimedObject, vectorcall), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot timed_slots[] = {
    {Py_tp_doc, (void *)PyDoc_STR("A callable counting each call of the function it wraps as one query.")},
    {Py_tp_dealloc, (void *)timed_dealloc},
    {Py_tp_traverse, (void *)timed_traverse},
    {Py_tp_clear, (void *)timed_clear},
    {Py_tp_call, (void *)PyVectorcall_Call},
    {Py_tp_descr_get, (void *)timed_descr_get},
    {Py_tp_repr, (void *)timed_repr},
    {Py_tp_getset, timed_getset},
    {Py_tp_members, timed_members},
    {0, NULL},
};

static PyType_Spec timed_spec = {
    .name = "querymeter.core._c.Timed",
    .basicsize = sizeof(TimedObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL
             | Py_TPFLAGS_METHOD_DESCRIPTOR | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = timed_slots,
};

/* ------------------------------------------------------ shapes: helpers */

enum { NOT_STARTED = 0, RUNNING = 1, DONE = 2 };

static module_state *
state_of_meter(MeterObject *m)
{
    PyObject *module = PyType_GetModuleByDef(Py_TYPE(m), &core_module);
    return module == NULL ? NULL : (module_state *)PyModule_GetState(module);
}

/* An attribute that may be missing: NULL without an exception if it is. */
static PyObject *
optional_attribute(PyObject *obj, const char *name)
{
    PyObject *value = PyObject_GetAttrString(obj, name);
    if (value == NULL && PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Clear();
    }
    return value;
}

/* Raises what throw(typ, val, tb) was given, as a generator would. */
static void
raise_given(PyObject *typ, PyObject *val, PyObject *tb)
{
    PyObject *type, *value;
    if (PyExceptionInstance_Check(typ)) {
        type = Py_NewRef((PyObject *)Py_TYPE(typ));
        value = Py_NewRef(typ);
    }
    else if (PyExceptionClass_Check(typ)) {
        type = Py_NewRef(typ);
        value = Py_XNewRef(val == Py_None ? NULL : val);
    }
    else {
        PyErr_SetString(PyExc_TypeError,
                        "exceptions must be classes or instances deriving from BaseException");
        return;
    }
    PyObject *traceback = (tb == NULL || tb == Py_None) ? NULL : Py_NewRef(tb);
    PyErr_NormalizeException(&type, &value, &traceback);
    if (traceback != NULL && value != NULL) {
        PyException_SetTraceback(value, traceback);
    }
    PyErr_Restore(type, value, traceback);
}

/* Sets StopIteration carrying `value` (which may itself be a tuple or an
   exception: always wrapped, as a generator's return value is). */
static void
set_stop_iteration(PyObject *value)
{
    if (value == Py_None) {
        PyErr_SetNone(PyExc_StopIteration);
        return;
    }
    PyObject *exc = PyObject_CallOneArg(PyExc_StopIteration, value);
    if (exc != NULL) {
        PyErr_SetObject(PyExc_StopIteration, exc);
        Py_DECREF(exc);
    }
}

/* What `await awaitable` iterates. */
static PyObject *
await_iterator(PyObject *awaitable)
{
    if (PyCoro_CheckExact(awaitable)) {
        return Py_NewRef(awaitable);
    }
    if (PyGen_CheckExact(awaitable)) {
        /* A generator-based coroutine (types.coroutine) is awaited as itself. */
        PyObject *code = optional_attribute(awaitable, "gi_code");
        int iterable = code != NULL && PyCode_Check(code)
                       && (((PyCodeObject *)code)->co_flags & CO_ITERABLE_COROUTINE);
        Py_XDECREF(code);
        if (PyErr_Occurred()) {
            return NULL;
        }
        if (iterable) {
            return Py_NewRef(awaitable);
        }
    }
    PyAsyncMethods *am = Py_TYPE(awaitable)->tp_as_async;
    if (am == NULL || am->am_await == NULL) {
        PyErr_Format(PyExc_TypeError, "object %.100s can't be used in 'await' expression",
                     Py_TYPE(awaitable)->tp_name);
        return NULL;
    }
    PyObject *iterator = am->am_await(awaitable);
    if (iterator != NULL && !PyIter_Check(iterator)) {
        PyErr_Format(PyExc_TypeError, "__await__() returned non-iterator of type '%.100s'",
                     Py_TYPE(iterator)->tp_name);
        Py_CLEAR(iterator);
    }
    return iterator;
}

/* ------------------------------------------------------------- Awaiting */

/* What an Awaiting does.  QUERY: counted as one query from its first step to
   its end.  STEP: one __anext__ of an AsyncIterating, whose end of iteration
   (StopAsyncIteration) or error ends the owner's query.  STOP and NONE: an
   awaitable that raises StopAsyncIteration, or returns None, at once. */
enum { MODE_QUERY = 0, MODE_STEP = 1, MODE_STOP = 2, MODE_NONE = 3 };

typedef struct AsyncIteratingObject AsyncIteratingObject;

typedef struct {
    PyObject_HEAD
    MeterObject *meter;
    PyObject *awaitable;              /* what was given */
    PyObject *iterator;               /* what the await iterates, from the first step */
    AsyncIteratingObject *owner;      /* MODE_STEP only */
    PyObject *statement;              /* (dialect, sql, params) or NULL */
    int mode;
    int state;
    qm_node node;
    uint64_t epoch;
} AwaitingObject;

struct AsyncIteratingObject {
    PyObject_HEAD
    MeterObject *meter;
    PyObject *iterator;
    PyObject *statement;              /* (dialect, sql, params) or NULL */
    PyTypeObject *awaiting_type;
    int state;
    qm_node node;
    uint64_t epoch;
};

/* Ends the owner's query; -1 if the clock was interrupted (exception set). */
static int
async_iterating_finish(AsyncIteratingObject *self, int error)
{
    int running = self->state == RUNNING;
    self->state = DONE;
    if (running) {
        statement_ref st;
        return query_end_observed(self->meter, &self->node, self->epoch, error, NULL,
                                  statement_of_tuple(self->statement, &st), NULL);
    }
    return 0;
}

/* Takes the first step's state change: the iterator, the begin.  0 to go
   on; 1 when the result is already known (MODE_NONE: *result is None);
   -1 with an exception set. */
static int
awaiting_start(AwaitingObject *self, PyObject **result)
{
    if (self->state == RUNNING) {
        return 0;
    }
    if (self->state == DONE) {
        PyErr_SetString(PyExc_RuntimeError,
                        "cannot reuse an awaitable that querymeter has counted");
        return -1;
    }
    if (self->mode == MODE_STOP) {
        self->state = DONE;
        PyErr_SetNone(PyExc_StopAsyncIteration);
        return -1;
    }
    if (self->mode == MODE_NONE) {
        self->state = DONE;
        *result = Py_NewRef(Py_None);
        return 1;
    }
    PyObject *iterator = await_iterator(self->awaitable);
    if (iterator == NULL) {
        self->state = DONE;
        return -1;
    }
    if (self->mode == MODE_QUERY) {
        if (query_begin(self->meter, &self->node, &self->epoch) < 0) {
            Py_DECREF(iterator);
            return -1;
        }
    }
    else {
        AsyncIteratingObject *owner = self->owner;
        if (owner->state == NOT_STARTED) {
            if (query_begin(owner->meter, &owner->node, &owner->epoch) < 0) {
                Py_DECREF(iterator);
                return -1;
            }
            owner->state = RUNNING;
        }
    }
    Py_XSETREF(self->iterator, iterator);
    self->state = RUNNING;
    return 0;
}

/* After a step that raised (exception set) or returned (finished = 1, the
   awaitable's own return): ends what must end.  -1 if the clock was
   interrupted (its exception replaces the step's). */
static int
awaiting_finish(AwaitingObject *self, int raised)
{
    int running = self->state == RUNNING;
    self->state = DONE;
    if (!running) {
        return 0;
    }
    if (self->mode == MODE_QUERY) {
        statement_ref st;
        return query_end_observed(self->meter, &self->node, self->epoch, raised, NULL,
                                  statement_of_tuple(self->statement, &st), NULL);
    }
    if (!raised) {
        /* One item of the iteration: the query goes on. */
        return 0;
    }
    int stopped = PyErr_ExceptionMatches(PyExc_StopAsyncIteration);
    return async_iterating_finish(self->owner, !stopped);
}

static PySendResult
awaiting_am_send(PyObject *op, PyObject *value, PyObject **result)
{
    AwaitingObject *self = (AwaitingObject *)op;
    *result = NULL;
    int started = awaiting_start(self, result);
    if (started < 0) {
        return PYGEN_ERROR;
    }
    if (started > 0) {
        return PYGEN_RETURN;
    }
    PySendResult status = PyIter_Send(self->iterator, value, result);
    if (status == PYGEN_NEXT) {
        return status;
    }
    if (awaiting_finish(self, status == PYGEN_ERROR) < 0) {
        Py_CLEAR(*result);
        return PYGEN_ERROR;
    }
    return status;
}

static PyObject *
awaiting_send(PyObject *op, PyObject *value)
{
    PyObject *result;
    PySendResult status = awaiting_am_send(op, value, &result);
    if (status == PYGEN_RETURN) {
        set_stop_iteration(result);
        Py_DECREF(result);
        return NULL;
    }
    return result;
}

static PyObject *
awaiting_iternext(PyObject *op)
{
    return awaiting_send(op, Py_None);
}

static PyObject *
awaiting_throw(AwaitingObject *self, PyObject *args)
{
    PyObject *typ, *val = NULL, *tb = NULL;
    if (!PyArg_UnpackTuple(args, "throw", 1, 3, &typ, &val, &tb)) {
        return NULL;
    }
    if (self->state == DONE || self->mode == MODE_STOP || self->mode == MODE_NONE) {
        self->state = DONE;
        raise_given(typ, val, tb);
        return NULL;
    }
    PyObject *ignored = NULL;
    if (awaiting_start(self, &ignored) < 0) {
        return NULL;
    }
    PyObject *throw = optional_attribute(self->iterator, "throw");
    PyObject *result = NULL;
    if (throw != NULL) {
        result = PyObject_Call(throw, args, NULL);
        Py_DECREF(throw);
    }
    else if (!PyErr_Occurred()) {
        raise_given(typ, val, tb);
    }
    if (result != NULL) {
        return result;
    }
    int returned = PyErr_ExceptionMatches(PyExc_StopIteration);
    awaiting_finish(self, !returned);
    return NULL;
}

static PyObject *
awaiting_close(AwaitingObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->state == DONE || self->mode == MODE_STOP || self->mode == MODE_NONE) {
        self->state = DONE;
        Py_RETURN_NONE;
    }
    PyObject *target = self->state == RUNNING ? self->iterator : self->awaitable;
    PyObject *close = optional_attribute(target, "close");
    PyObject *result = NULL;
    if (close != NULL) {
        result = PyObject_CallNoArgs(close);
        Py_DECREF(close);
    }
    else if (!PyErr_Occurred()) {
        result = Py_NewRef(Py_None);
    }
    /* Closed before its end: the query ended without a result, an error. */
    int running = self->state == RUNNING;
    self->state = DONE;
    int status = 0;
    if (running) {
        if (self->mode == MODE_QUERY) {
            statement_ref st;
            status = query_end_observed(self->meter, &self->node, self->epoch, 1, NULL,
                                        statement_of_tuple(self->statement, &st), NULL);
        }
        else {
            status = async_iterating_finish(self->owner, 1);
        }
    }
    if (status < 0) {
        Py_XDECREF(result);
        return NULL;
    }
    return result;
}

static PyObject *
awaiting_await(PyObject *self)
{
    return Py_NewRef(self);
}

static int
awaiting_traverse(AwaitingObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->meter);
    Py_VISIT(self->awaitable);
    Py_VISIT(self->iterator);
    Py_VISIT(self->owner);
    Py_VISIT(self->statement);
    return 0;
}

static int
awaiting_clear(AwaitingObject *self)
{
    Py_CLEAR(self->meter);
    Py_CLEAR(self->awaitable);
    Py_CLEAR(self->iterator);
    Py_CLEAR(self->owner);
    Py_CLEAR(self->statement);
    return 0;
}

static void
awaiting_dealloc(AwaitingObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    /* Collected mid-way: the query ended without a result, an error (a
       step's owner ends by itself, when it goes). */
    if (self->state == RUNNING && self->mode == MODE_QUERY && self->meter != NULL) {
        self->state = DONE;
        statement_ref st;
        if (query_end_observed(self->meter, &self->node, self->epoch, 1, NULL,
                               statement_of_tuple(self->statement, &st), NULL) < 0) {
            PyErr_WriteUnraisable((PyObject *)self);
        }
    }
    node_unlink(&self->node);
    awaiting_clear(self);
    PyObject_GC_Del(self);
    Py_DECREF(tp);
}

static PyObject *
awaiting_repr(AwaitingObject *self)
{
    if (self->awaitable == NULL) {
        return PyUnicode_FromString("<querymeter awaiting>");
    }
    return PyUnicode_FromFormat("<querymeter awaiting %R>", self->awaitable);
}

static PyObject *
new_awaiting(PyTypeObject *type, MeterObject *meter, PyObject *awaitable,
             AsyncIteratingObject *owner, int mode, PyObject *statement)
{
    AwaitingObject *self = PyObject_GC_New(AwaitingObject, type);
    if (self == NULL) {
        return NULL;
    }
    self->meter = (MeterObject *)Py_XNewRef(meter);
    self->awaitable = Py_XNewRef(awaitable);
    self->iterator = NULL;
    self->owner = (AsyncIteratingObject *)Py_XNewRef(owner);
    self->statement = Py_XNewRef(statement);
    self->mode = mode;
    self->state = NOT_STARTED;
    self->node.next = self->node.prev = NULL;
    self->node.start_ns = 0;
    self->epoch = 0;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static PyObject *
meter_awaiting(MeterObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *awaitable, *statement;
    if (shape_arguments("_awaiting", args, nargs, &awaitable, &statement) < 0) {
        return NULL;
    }
    module_state *state = state_of_meter(self);
    if (state == NULL) {
        return NULL;
    }
    return new_awaiting(state->awaiting_type, self, awaitable, NULL, MODE_QUERY, statement);
}

static PyMethodDef awaiting_methods[] = {
    {"send", (PyCFunction)awaiting_send, METH_O, NULL},
    {"throw", (PyCFunction)awaiting_throw, METH_VARARGS, NULL},
    {"close", (PyCFunction)awaiting_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot awaiting_slots[] = {
    {Py_tp_doc, (void *)PyDoc_STR("An awaitable counted as one query, from its first step until it completes.")},
    {Py_tp_dealloc, (void *)awaiting_dealloc},
    {Py_tp_traverse, (void *)awaiting_traverse},
    {Py_tp_clear, (void *)awaiting_clear},
    {Py_tp_repr, (void *)awaiting_repr},
    {Py_tp_iter, (void *)PyObject_SelfIter},
    {Py_tp_iternext, (void *)awaiting_iternext},
    {Py_tp_methods, awaiting_methods},
    {Py_am_await, (void *)awaiting_await},
    {Py_am_send, (void *)awaiting_am_send},
    {0, NULL},
};

static PyType_Spec awaiting_spec = {
    .name = "querymeter.core._c.Awaiting",
    .basicsize = sizeof(AwaitingObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = awaiting_slots,
};

/* ------------------------------------------------------------ Iterating */

typedef struct {
    PyObject_HEAD
    MeterObject *meter;
    PyObject *iterator;
    PyObject *statement;  /* (dialect, sql, params) or NULL */
    int state;
    qm_node node;
    uint64_t epoch;
} IteratingObject;

/* Exhausted, closed early or collected: not an error; raised: an error. */
static int
iterating_finish(IteratingObject *self, int error)
{
    int running = self->state == RUNNING;
    self->state = DONE;
    if (running) {
        statement_ref st;
        return query_end_observed(self->meter, &self->node, self->epoch, error, NULL,
                                  statement_of_tuple(self->statement, &st), NULL);
    }
    return 0;
}

static PyObject *
iterating_iternext(IteratingObject *self)
{
    if (self->state == DONE) {
        return NULL;
    }
    if (self->state == NOT_STARTED) {
        if (query_begin(self->meter, &self->node, &self->epoch) < 0) {
            return NULL;
        }
        self->state = RUNNING;
    }
    PyObject *item = Py_TYPE(self->iterator)->tp_iternext(self->iterator);
    if (item != NULL) {
        return item;
    }
    int error = 0;
    if (PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_StopIteration)) {
            PyErr_Clear();
        }
        else {
            error = 1;
        }
    }
    iterating_finish(self, error);
    return NULL;
}

static PyObject *
iterating_close(IteratingObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->state == DONE) {
        Py_RETURN_NONE;
    }
    PyObject *close = optional_attribute(self->iterator, "close");
    PyObject *result = NULL;
    if (close != NULL) {
        result = PyObject_CallNoArgs(close);
        Py_DECREF(close);
    }
    else if (!PyErr_Occurred()) {
        result = Py_NewRef(Py_None);
    }
    if (iterating_finish(self, 0) < 0) {
        Py_XDECREF(result);
        return NULL;
    }
    return result;
}

static int
iterating_traverse(IteratingObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->meter);
    Py_VISIT(self->iterator);
    Py_VISIT(self->statement);
    return 0;
}

static int
iterating_clear(IteratingObject *self)
{
    Py_CLEAR(self->meter);
    Py_CLEAR(self->iterator);
    Py_CLEAR(self->statement);
    return 0;
}

static void
iterating_dealloc(IteratingObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->state == RUNNING && self->meter != NULL) {
        if (iterating_finish(self, 0) < 0) {
            PyErr_WriteUnraisable((PyObject *)self);
        }
    }
    node_unlink(&self->node);
    iterating_clear(self);
    PyObject_GC_Del(self);
    Py_DECREF(tp);
}

static PyObject *
meter_iterating(MeterObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *iterable, *statement;
    if (shape_arguments("_iterating", args, nargs, &iterable, &statement) < 0) {
        return NULL;
    }
    module_state *state = state_of_meter(self);
    if (state == NULL) {
        return NULL;
    }
    PyObject *iterator = PyObject_GetIter(iterable);
    if (iterator == NULL) {
        return NULL;
    }
    IteratingObject *it = PyObject_GC_New(IteratingObject, state->iterating_type);
    if (it == NULL) {
        Py_DECREF(iterator);
        return NULL;
    }
    it->meter = (MeterObject *)Py_NewRef(self);
    it->iterator = iterator;
    it->statement = Py_XNewRef(statement);
    it->state = NOT_STARTED;
    it->node.next = it->node.prev = NULL;
    it->node.start_ns = 0;
    it->epoch = 0;
    PyObject_GC_Track(it);
    return (PyObject *)it;
}

static PyMethodDef iterating_methods[] = {
    {"close", (PyCFunction)iterating_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot iterating_slots[] = {
    {Py_tp_doc, (void *)PyDoc_STR("An iterator counted as one query, from the first item asked for until its end.")},
    {Py_tp_dealloc, (void *)iterating_dealloc},
    {Py_tp_traverse, (void *)iterating_traverse},
    {Py_tp_clear, (void *)iterating_clear},
    {Py_tp_iter, (void *)PyObject_SelfIter},
    {Py_tp_iternext, (void *)iterating_iternext},
    {Py_tp_methods, iterating_methods},
    {0, NULL},
};

static PyType_Spec iterating_spec = {
    .name = "querymeter.core._c.Iterating",
    .basicsize = sizeof(IteratingObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = iterating_slots,
};

/* ------------------------------------------------------- AsyncIterating */

static PyObject *
async_iterating_anext(AsyncIteratingObject *self)
{
    if (self->state == DONE) {
        return new_awaiting(self->awaiting_type, self->meter, NULL, NULL, MODE_STOP, NULL);
    }
    PyAsyncMethods *am = Py_TYPE(self->iterator)->tp_as_async;
    if (am == NULL || am->am_anext == NULL) {
        PyErr_Format(PyExc_TypeError, "'%.100s' object is not an async iterator",
                     Py_TYPE(self->iterator)->tp_name);
        return NULL;
    }
    PyObject *step = am->am_anext(self->iterator);
    if (step == NULL) {
        return NULL;
    }
    PyObject *result = new_awaiting(self->awaiting_type, self->meter, step, self, MODE_STEP, NULL);
    Py_DECREF(step);
    return result;
}

static PyObject *
async_iterating_aclose(AsyncIteratingObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->state == DONE) {
        return new_awaiting(self->awaiting_type, self->meter, NULL, NULL, MODE_NONE, NULL);
    }
    /* Closed early: ended, not an error. */
    if (async_iterating_finish(self, 0) < 0) {
        return NULL;
    }
    PyObject *aclose = optional_attribute(self->iterator, "aclose");
    if (aclose == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        return new_awaiting(self->awaiting_type, self->meter, NULL, NULL, MODE_NONE, NULL);
    }
    PyObject *result = PyObject_CallNoArgs(aclose);
    Py_DECREF(aclose);
    return result;
}

static int
async_iterating_traverse(AsyncIteratingObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->meter);
    Py_VISIT(self->iterator);
    Py_VISIT(self->statement);
    return 0;
}

static int
async_iterating_clear(AsyncIteratingObject *self)
{
    Py_CLEAR(self->meter);
    Py_CLEAR(self->iterator);
    Py_CLEAR(self->statement);
    return 0;
}

static void
async_iterating_dealloc(AsyncIteratingObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->state == RUNNING && self->meter != NULL) {
        if (async_iterating_finish(self, 0) < 0) {
            PyErr_WriteUnraisable((PyObject *)self);
        }
    }
    node_unlink(&self->node);
    async_iterating_clear(self);
    Py_CLEAR(self->awaiting_type);
    PyObject_GC_Del(self);
    Py_DECREF(tp);
}

static PyObject *
meter_async_iterating(MeterObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *iterator, *statement;
    if (shape_arguments("_async_iterating", args, nargs, &iterator, &statement) < 0) {
        return NULL;
    }
    module_state *state = state_of_meter(self);
    if (state == NULL) {
        return NULL;
    }
    PyAsyncMethods *am = Py_TYPE(iterator)->tp_as_async;
    if (am == NULL || am->am_anext == NULL) {
        PyErr_Format(PyExc_TypeError, "'%.100s' object is not an async iterator",
                     Py_TYPE(iterator)->tp_name);
        return NULL;
    }
    AsyncIteratingObject *it = PyObject_GC_New(AsyncIteratingObject,
                                               state->async_iterating_type);
    if (it == NULL) {
        return NULL;
    }
    it->meter = (MeterObject *)Py_NewRef(self);
    it->iterator = Py_NewRef(iterator);
    it->statement = Py_XNewRef(statement);
    it->awaiting_type = (PyTypeObject *)Py_NewRef(state->awaiting_type);
    it->state = NOT_STARTED;
    it->node.next = it->node.prev = NULL;
    it->node.start_ns = 0;
    it->epoch = 0;
    PyObject_GC_Track(it);
    return (PyObject *)it;
}

static PyMethodDef async_iterating_methods[] = {
    {"aclose", (PyCFunction)async_iterating_aclose, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot async_iterating_slots[] = {
    {Py_tp_doc, (void *)PyDoc_STR("An async iterator counted as one query, from the first item asked for until its end.")},
    {Py_tp_dealloc, (void *)async_iterating_dealloc},
    {Py_tp_traverse, (void *)async_iterating_traverse},
    {Py_tp_clear, (void *)async_iterating_clear},
    {Py_tp_methods, async_iterating_methods},
    {Py_am_aiter, (void *)PyObject_SelfIter},
    {Py_am_anext, (void *)async_iterating_anext},
    {0, NULL},
};

static PyType_Spec async_iterating_spec = {
    .name = "querymeter.core._c.AsyncIterating",
    .basicsize = sizeof(AsyncIteratingObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = async_iterating_slots,
};

/* ---------------------------------------------------------- Occupancies */

#define QM_MAX_OCCUPANCIES 64

/* One kind of occupancy (a wait for a connection, a checkout, a connection
   held): the meter's bookkeeping for queries, applied to something else. */
typedef struct {
    int64_t under_way;
    uint64_t ended;
    uint64_t failures;
    uint64_t timeouts;
    qm_u128 total_ns;
    int64_t stamp_ns;
} qm_occupancy;

typedef struct {
    PyObject_HEAD
    MeterObject *meter;
    uint64_t epoch;      /* the meter's epoch they count in: a reset meter resets them */
    int64_t start_ns;
    int64_t started;
    Py_ssize_t count;
    qm_occupancy slots[QM_MAX_OCCUPANCIES];
    PyTypeObject *timed_type;
    PyObject *weakreflist;
} OccupanciesObject;

typedef struct {
    PyObject_HEAD
    OccupanciesObject *occupancies;
    Py_ssize_t index;
    PyObject *func;
    PyObject *timeout;   /* an exception class, or NULL */
    PyObject *dict;
    PyObject *weakreflist;
    vectorcallfunc vectorcall;
} OccupancyTimedObject;

/* The reading to use, settled; restarts the counters where the meter was
   reset (fork).  Critical section: no Python. */
static int64_t
occupancies_settle(OccupanciesObject *self, int64_t now)
{
    if (self->epoch != self->meter->epoch) {
        self->epoch = self->meter->epoch;
        self->started = 0;
        self->start_ns = 0;
        memset(self->slots, 0, sizeof(self->slots));
    }
    if (!self->started) {
        if (now == QM_NO_READING) {
            return self->start_ns;
        }
        self->started = 1;
        self->start_ns = now;
        for (Py_ssize_t i = 0; i < self->count; i++) {
            self->slots[i].stamp_ns = now;
        }
    }
    return now;
}

static inline void
occupancy_advance(qm_occupancy *slot, int64_t now)
{
    if (now > slot->stamp_ns) {
        uint64_t dt = (uint64_t)now - (uint64_t)slot->stamp_ns;
        slot->total_ns += (qm_u128)dt * (uint64_t)slot->under_way;
        slot->stamp_ns = now;
    }
}

/* One change of slot `index` at `now`.  Critical section: no Python. */
static void
occupancies_change(OccupanciesObject *self, Py_ssize_t index, int64_t now, int delta,
                   int ended, int failed, int timed_out)
{
    now = occupancies_settle(self, now);
    qm_occupancy *slot = &self->slots[index];
    occupancy_advance(slot, now);
    if (delta > 0 || slot->under_way > 0) {
        slot->under_way += delta;
    }
    slot->ended += (uint64_t)ended;
    if (failed) {
        slot->failures += 1;
    }
    if (timed_out) {
        slot->timeouts += 1;
    }
}

static int
occupancies_index(OccupanciesObject *self, PyObject *index_obj, Py_ssize_t *index)
{
    Py_ssize_t index_value = PyLong_Check(index_obj) ? PyLong_AsSsize_t(index_obj) : -1;
    if (index_value == -1 && PyErr_Occurred()) {
        PyErr_Clear();
    }
    if (!PyLong_Check(index_obj) || index_value < 0 || index_value >= self->count) {
        PyObject *shown = PyObject_Repr(index_obj);
        if (shown != NULL) {
            PyErr_Format(PyExc_IndexError, "occupancy index out of range: %U", shown);
            Py_DECREF(shown);
        }
        return -1;
    }
    *index = index_value;
    return 0;
}

static PyObject *
occupancy_timed_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf,
                           PyObject *kwnames)
{
    OccupancyTimedObject *self = (OccupancyTimedObject *)op;
    if (!qm_enabled) {
        return PyObject_Vectorcall(self->func, args, nargsf, kwnames);
    }
    OccupanciesObject *occ = self->occupancies;
    MeterObject *m = occ->meter;
    uint64_t epoch = m->epoch;
    int interrupted = 0;
    int64_t now = meter_clock(m, &interrupted);
    if (interrupted) {
        return NULL;
    }
    occupancies_change(occ, self->index, now, 1, 0, 0, 0);

    PyObject *result = PyObject_Vectorcall(self->func, args, nargsf, kwnames);

    int failed = result == NULL;
    int timed_out = failed && self->timeout != NULL && PyErr_ExceptionMatches(self->timeout);
    now = meter_clock(m, &interrupted);
    if (epoch == m->epoch) {
        occupancies_change(occ, self->index, now, -1, 1, failed, timed_out);
    }
    if (interrupted) {
        Py_XDECREF(result);
        return NULL;
    }
    return result;
}

static PyObject *
occupancy_timed_descr_get(PyObject *self, PyObject *obj, PyObject *Py_UNUSED(type))
{
    if (obj == NULL || obj == Py_None) {
        return Py_NewRef(self);
    }
    return PyMethod_New(self, obj);
}

static int
occupancy_timed_traverse(OccupancyTimedObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->occupancies);
    Py_VISIT(self->func);
    Py_VISIT(self->timeout);
    Py_VISIT(self->dict);
    return 0;
}

static int
occupancy_timed_clear(OccupancyTimedObject *self)
{
    Py_CLEAR(self->occupancies);
    Py_CLEAR(self->func);
    Py_CLEAR(self->timeout);
    Py_CLEAR(self->dict);
    return 0;
}

static void
occupancy_timed_dealloc(OccupancyTimedObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    occupancy_timed_clear(self);
    PyObject_GC_Del(self);
    Py_DECREF(tp);
}

static PyGetSetDef occupancy_timed_getset[] = {
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef occupancy_timed_members[] = {
    {"__dictoffset__", T_PYSSIZET, offsetof(OccupancyTimedObject, dict), READONLY, NULL},
    {"__weaklistoffset__", T_PYSSIZET, offsetof(OccupancyTimedObject, weakreflist), READONLY, NULL},
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(OccupancyTimedObject, vectorcall), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot occupancy_timed_slots[] = {
    {Py_tp_doc, (void *)PyDoc_STR("A callable counting each call of the function it wraps as one occupancy.")},
    {Py_tp_dealloc, (void *)occupancy_timed_dealloc},
    {Py_tp_traverse, (void *)occupancy_timed_traverse},
    {Py_tp_clear, (void *)occupancy_timed_clear},
    {Py_tp_call, (void *)PyVectorcall_Call},
    {Py_tp_descr_get, (void *)occupancy_timed_descr_get},
    {Py_tp_getset, occupancy_timed_getset},
    {Py_tp_members, occupancy_timed_members},
    {0, NULL},
};

static PyType_Spec occupancy_timed_spec = {
    .name = "querymeter.core._c.OccupancyTimed",
    .basicsize = sizeof(OccupancyTimedObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL
             | Py_TPFLAGS_METHOD_DESCRIPTOR | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = occupancy_timed_slots,
};

static PyObject *
occupancies_timed(OccupanciesObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"index", "func", "timeout", NULL};
    PyObject *index_obj, *func, *timeout = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|O:_timed", kwlist, &index_obj, &func,
                                     &timeout)) {
        return NULL;
    }
    Py_ssize_t index;
    if (occupancies_index(self, index_obj, &index) < 0) {
        return NULL;
    }
    if (!PyCallable_Check(func)) {
        PyErr_Format(PyExc_TypeError, "cannot time %.200s: it is not callable",
                     Py_TYPE(func)->tp_name);
        return NULL;
    }
    if (timeout != Py_None && !PyExceptionClass_Check(timeout)) {
        PyErr_SetString(PyExc_TypeError, "timeout must be an exception class or None");
        return NULL;
    }
    OccupancyTimedObject *timed = PyObject_GC_New(OccupancyTimedObject, self->timed_type);
    if (timed == NULL) {
        return NULL;
    }
    timed->occupancies = (OccupanciesObject *)Py_NewRef(self);
    timed->index = index;
    timed->func = Py_NewRef(func);
    timed->timeout = timeout == Py_None ? NULL : Py_NewRef(timeout);
    timed->dict = NULL;
    timed->weakreflist = NULL;
    timed->vectorcall = occupancy_timed_vectorcall;
    PyObject_GC_Track(timed);
    return (PyObject *)timed;
}

/* Whether weak reference `ref` is alive and refers to `obj` (obj NULL: whether it is dead). */
static int
weakref_refers_to(PyObject *ref, PyObject *obj)
{
    if (!PyWeakref_Check(ref)) {
        return 0;
    }
#if PY_VERSION_HEX >= 0x030D0000
    PyObject *target = NULL;
    if (PyWeakref_GetRef(ref, &target) < 0) {
        PyErr_Clear();
        return 0;
    }
    int same = obj == NULL ? target == NULL : target == obj;
    Py_XDECREF(target);
    return same;
#else
    PyObject *target = PyWeakref_GET_OBJECT(ref);
    return obj == NULL ? target == Py_None : target == obj;
#endif
}

static PyObject *
occupancies_hold(OccupanciesObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "_hold() takes exactly 4 arguments (index, records, key, record)");
        return NULL;
    }
    Py_ssize_t index;
    if (occupancies_index(self, args[0], &index) < 0) {
        return NULL;
    }
    PyObject *records = args[1], *key = args[2], *record = args[3];
    if (!PyDict_Check(records)) {
        PyErr_SetString(PyExc_TypeError, "records must be a dict");
        return NULL;
    }
    if (!qm_enabled) {
        Py_RETURN_FALSE;  /* not held: its release finds nothing to end */
    }
    /* Allocated first: the critical section below allocates nothing. */
    PyObject *ref = PyWeakref_NewRef(record, NULL);
    if (ref == NULL) {
        return NULL;
    }
    int interrupted = 0;
    int64_t now = meter_clock(self->meter, &interrupted);
    if (interrupted) {
        Py_DECREF(ref);
        return NULL;
    }
    PyObject *known = PyDict_GetItemWithError(records, key);
    if (known == NULL && PyErr_Occurred()) {
        Py_DECREF(ref);
        return NULL;
    }
    if (known != NULL && weakref_refers_to(known, record)) {
        Py_DECREF(ref);
        Py_RETURN_FALSE;
    }
    int lost = known != NULL;
    if (PyDict_SetItem(records, key, ref) < 0) {
        Py_DECREF(ref);
        return NULL;
    }
    Py_DECREF(ref);
    if (lost) {
        /* A record collected while held, its key now reused: it stops
           being held without ending. */
        occupancies_change(self, index, now, -1, 0, 0, 0);
    }
    occupancies_change(self, index, now, 1, 0, 0, 0);
    Py_RETURN_TRUE;
}

static PyObject *
occupancies_release(OccupanciesObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "_release() takes exactly 4 arguments (index, records, key, record)");
        return NULL;
    }
    Py_ssize_t index;
    if (occupancies_index(self, args[0], &index) < 0) {
        return NULL;
    }
    PyObject *records = args[1], *key = args[2], *record = args[3];
    if (!PyDict_Check(records)) {
        PyErr_SetString(PyExc_TypeError, "records must be a dict");
        return NULL;
    }
    int interrupted = 0;
    int64_t now = meter_clock(self->meter, &interrupted);
    if (interrupted) {
        return NULL;
    }
    PyObject *known = PyDict_GetItemWithError(records, key);
    if (known == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        Py_RETURN_FALSE;
    }
    if (!weakref_refers_to(known, record)) {
        Py_RETURN_FALSE;
    }
    if (PyDict_DelItem(records, key) < 0) {
        return NULL;
    }
    occupancies_change(self, index, now, -1, 1, 0, 0);
    Py_RETURN_TRUE;
}

static PyObject *
occupancies_drop_lost(OccupanciesObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_drop_lost() takes exactly 2 arguments (index, records)");
        return NULL;
    }
    Py_ssize_t index;
    if (occupancies_index(self, args[0], &index) < 0) {
        return NULL;
    }
    PyObject *records = args[1];
    if (!PyDict_Check(records)) {
        PyErr_SetString(PyExc_TypeError, "records must be a dict");
        return NULL;
    }
    int interrupted = 0;
    int64_t now = meter_clock(self->meter, &interrupted);
    if (interrupted) {
        return NULL;
    }
    /* Deleting does not allocate, so no collection (and no finalizer that
       checks a connection in) can run while this loop walks the dict; it
       starts over after each deletion, as PyDict_Next requires. */
    Py_ssize_t dropped = 0;
    int again = 1;
    while (again) {
        again = 0;
        Py_ssize_t pos = 0;
        PyObject *key, *value;
        while (PyDict_Next(records, &pos, &key, &value)) {
            if (weakref_refers_to(value, NULL)) {
                Py_INCREF(key);
                int status = PyDict_DelItem(records, key);
                Py_DECREF(key);
                if (status < 0) {
                    return NULL;
                }
                occupancies_change(self, index, now, -1, 0, 0, 0);
                dropped += 1;
                again = 1;
                break;
            }
        }
    }
    return PyLong_FromSsize_t(dropped);
}

static PyObject *
occupancies_bump(OccupanciesObject *self, PyObject *index_obj)
{
    Py_ssize_t index;
    if (occupancies_index(self, index_obj, &index) < 0) {
        return NULL;
    }
    if (!qm_enabled) {
        Py_RETURN_NONE;
    }
    int interrupted = 0;
    int64_t now = meter_clock(self->meter, &interrupted);
    if (interrupted) {
        return NULL;
    }
    occupancies_change(self, index, now, 0, 1, 0, 0);
    Py_RETURN_NONE;
}

static PyObject *
occupancies_read(OccupanciesObject *self, PyObject *Py_UNUSED(ignored))
{
    int interrupted = 0;
    int64_t now = meter_clock(self->meter, &interrupted);
    if (interrupted) {
        return NULL;
    }
    /* The critical section: every slot brought up to one instant, copied. */
    qm_occupancy copy[QM_MAX_OCCUPANCIES];
    now = occupancies_settle(self, now);
    if (now < self->start_ns) {
        now = self->start_ns;
    }
    for (Py_ssize_t i = 0; i < self->count; i++) {
        occupancy_advance(&self->slots[i], now);
        copy[i] = self->slots[i];
    }
    uint64_t uptime = (uint64_t)now - (uint64_t)self->start_ns;
    int64_t wall = wall_ns();
    Py_ssize_t count = self->count;
    /* End of the critical section. */

    PyObject *rows = PyTuple_New(count);
    if (rows == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *total = u128_to_pylong(copy[i].total_ns);
        if (total == NULL) {
            Py_DECREF(rows);
            return NULL;
        }
        PyObject *row = Py_BuildValue("(LKKKN)", (long long)copy[i].under_way,
                                      (unsigned long long)copy[i].ended,
                                      (unsigned long long)copy[i].failures,
                                      (unsigned long long)copy[i].timeouts, total);
        if (row == NULL) {
            Py_DECREF(rows);
            return NULL;
        }
        PyTuple_SET_ITEM(rows, i, row);
    }
    return Py_BuildValue("(KLN)", (unsigned long long)uptime, (long long)wall, rows);
}

static int
occupancies_traverse(OccupanciesObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->meter);
    return 0;
}

static int
occupancies_clear(OccupanciesObject *self)
{
    Py_CLEAR(self->meter);
    return 0;
}

static void
occupancies_dealloc(OccupanciesObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    occupancies_clear(self);
    Py_CLEAR(self->timed_type);
    PyObject_GC_Del(self);
    Py_DECREF(tp);
}

static PyObject *
meter_occupancies(MeterObject *self, PyObject *count_obj)
{
    module_state *state = state_of_meter(self);
    if (state == NULL) {
        return NULL;
    }
    Py_ssize_t count = PyLong_Check(count_obj) ? PyLong_AsSsize_t(count_obj) : -1;
    if (count == -1 && PyErr_Occurred()) {
        PyErr_Clear();
    }
    if (count < 1 || count > QM_MAX_OCCUPANCIES) {
        PyErr_SetString(PyExc_ValueError, "count must be an int from 1 to 64");
        return NULL;
    }
    int interrupted = 0;
    int64_t now = meter_clock(self, &interrupted);
    if (interrupted) {
        return NULL;
    }
    OccupanciesObject *occ = PyObject_GC_New(OccupanciesObject, state->occupancies_type);
    if (occ == NULL) {
        return NULL;
    }
    occ->meter = (MeterObject *)Py_NewRef(self);
    occ->epoch = self->epoch;
    occ->count = count;
    occ->started = 0;
    occ->start_ns = 0;
    memset(occ->slots, 0, sizeof(occ->slots));
    occ->timed_type = (PyTypeObject *)Py_NewRef(state->occupancy_timed_type);
    occ->weakreflist = NULL;
    (void)occupancies_settle(occ, now);
    PyObject_GC_Track(occ);
    return (PyObject *)occ;
}

static PyMethodDef occupancies_methods[] = {
    {"_timed", (PyCFunction)(void (*)(void))occupancies_timed, METH_VARARGS | METH_KEYWORDS,
     PyDoc_STR("_timed(index, func, timeout=None) -> callable\n\n"
               "Each call of func is one occupancy of slot `index`: under way during\n"
               "the call, then ended; a call that raises is also a failure, and one\n"
               "that raises `timeout` (an exception class) also a timeout.")},
    {"_hold", (PyCFunction)(void (*)(void))occupancies_hold, METH_FASTCALL,
     PyDoc_STR("_hold(index, records, key, record) -> bool\n\n"
               "`record` starts being held (under way in slot `index`), keyed by `key`\n"
               "in `records` with a weak reference; False if it was held already.  A\n"
               "dead record found under the key stops being held without ending.")},
    {"_release", (PyCFunction)(void (*)(void))occupancies_release, METH_FASTCALL,
     PyDoc_STR("_release(index, records, key, record) -> bool\n\n"
               "`record` stops being held and counts as ended; False if it was not held.")},
    {"_drop_lost", (PyCFunction)(void (*)(void))occupancies_drop_lost, METH_FASTCALL,
     PyDoc_STR("_drop_lost(index, records) -> int\n\n"
               "Records collected while held stop being held, without ending; how many.")},
    {"_bump", (PyCFunction)occupancies_bump, METH_O,
     PyDoc_STR("_bump(index) -> None\n\nCount one event in slot `index` (ended, never under way).")},
    {"_read", (PyCFunction)occupancies_read, METH_NOARGS,
     PyDoc_STR("_read() -> (uptime_ns, wall_ns, ((under_way, ended, failures, timeouts, total_ns), ...))\n\n"
               "Every slot at one instant, the time so far of what is under way included.")},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef occupancies_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(OccupanciesObject, weakreflist), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot occupancies_slots[] = {
    {Py_tp_doc, (void *)PyDoc_STR("Occupancy counters on a meter's clock, made by meter._occupancies(count).\n\nThings that start and end (a wait for a pool connection, a checkout, a\nconnection held), each counted as the meter counts queries: under way now,\nended, failed, timed out, and the sum of their durations in ns, the time so\nfar of those under way included.  Restarted from zero with their meter (in\na forked child).")},
    {Py_tp_dealloc, (void *)occupancies_dealloc},
    {Py_tp_traverse, (void *)occupancies_traverse},
    {Py_tp_clear, (void *)occupancies_clear},
    {Py_tp_methods, occupancies_methods},
    {Py_tp_members, occupancies_members},
    {0, NULL},
};

static PyType_Spec occupancies_spec = {
    .name = "querymeter.core._c.Occupancies",
    .basicsize = sizeof(OccupanciesObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = occupancies_slots,
};

/* --------------------------------------------------------------- module */

static int
module_exec(PyObject *module)
{
    module_state *state = PyModule_GetState(module);
    state->meter_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &meter_spec, NULL);
    state->token_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &token_spec, NULL);
    state->tracker_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &tracker_spec, NULL);
    state->timed_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &timed_spec, NULL);
    state->awaiting_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &awaiting_spec, NULL);
    state->iterating_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &iterating_spec, NULL);
    state->async_iterating_type =
        (PyTypeObject *)PyType_FromModuleAndSpec(module, &async_iterating_spec, NULL);
    state->occupancies_type =
        (PyTypeObject *)PyType_FromModuleAndSpec(module, &occupancies_spec, NULL);
    state->occupancy_timed_type =
        (PyTypeObject *)PyType_FromModuleAndSpec(module, &occupancy_timed_spec, NULL);
    state->entry_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &entry_spec, NULL);
    state->statements_type =
        (PyTypeObject *)PyType_FromModuleAndSpec(module, &statements_spec, NULL);
    state->sampling_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &sampling_spec, NULL);
    state->scope_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &scope_spec, NULL);
    /* The kill switch starts off where the environment says so, as the twin's. */
    const char *disable = getenv("QUERYMETER_DISABLE");
    if (disable != NULL && strcmp(disable, "1") == 0) {
        qm_enabled = 0;
    }
    if (qm_scope_var == NULL) {
        qm_scope_var = PyContextVar_New("querymeter_core_c_scope", NULL);
        if (qm_scope_var == NULL) {
            return -1;
        }
    }
    PyTypeObject *types[] = {
        state->meter_type,     state->token_type,           state->tracker_type,
        state->timed_type,     state->awaiting_type,        state->iterating_type,
        state->async_iterating_type, state->occupancies_type, state->occupancy_timed_type,
        state->entry_type,     state->statements_type,      state->sampling_type,
        state->scope_type,
    };
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        if (types[i] == NULL || PyModule_AddType(module, types[i]) < 0) {
            return -1;
        }
    }
    return 0;
}

static int
module_traverse(PyObject *module, visitproc visit, void *arg)
{
    module_state *state = PyModule_GetState(module);
    Py_VISIT(state->meter_type);
    Py_VISIT(state->token_type);
    Py_VISIT(state->tracker_type);
    Py_VISIT(state->timed_type);
    Py_VISIT(state->awaiting_type);
    Py_VISIT(state->iterating_type);
    Py_VISIT(state->async_iterating_type);
    Py_VISIT(state->occupancies_type);
    Py_VISIT(state->occupancy_timed_type);
    Py_VISIT(state->entry_type);
    Py_VISIT(state->statements_type);
    Py_VISIT(state->sampling_type);
    Py_VISIT(state->scope_type);
    return 0;
}

static int
module_clear(PyObject *module)
{
    module_state *state = PyModule_GetState(module);
    Py_CLEAR(state->meter_type);
    Py_CLEAR(state->token_type);
    Py_CLEAR(state->tracker_type);
    Py_CLEAR(state->timed_type);
    Py_CLEAR(state->awaiting_type);
    Py_CLEAR(state->iterating_type);
    Py_CLEAR(state->async_iterating_type);
    Py_CLEAR(state->occupancies_type);
    Py_CLEAR(state->occupancy_timed_type);
    Py_CLEAR(state->entry_type);
    Py_CLEAR(state->statements_type);
    Py_CLEAR(state->sampling_type);
    Py_CLEAR(state->scope_type);
    return 0;
}

static void
module_free(void *module)
{
    module_clear((PyObject *)module);
}

/* _set_enabled(flag): the kill switch (see qm_enabled). */
static PyObject *
module_set_enabled(PyObject *Py_UNUSED(module), PyObject *flag)
{
    int value = PyObject_IsTrue(flag);
    if (value < 0) {
        return NULL;
    }
    qm_enabled = value;
    Py_RETURN_NONE;
}

static PyObject *
module_enabled(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(qm_enabled);
}

/* _enter_scope(focus, tags) -> (scope, token): a new innermost scope, inside
   the current one; focus is a frozenset of session keys, or None. */
static PyObject *
module_enter_scope(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_enter_scope() takes focus and tags");
        return NULL;
    }
    PyObject *focus = args[0];
    if (focus != Py_None && !PyFrozenSet_CheckExact(focus)) {
        PyErr_SetString(PyExc_TypeError, "focus must be a frozenset or None");
        return NULL;
    }
    module_state *state = PyModule_GetState(module);
    ScopeObject *scope = PyObject_GC_New(ScopeObject, state->scope_type);
    if (scope == NULL) {
        return NULL;
    }
    scope->parent = NULL;
    scope->focus = focus == Py_None ? NULL : Py_NewRef(focus);
    scope->tags = Py_NewRef(args[1]);
    scope->queries = scope->errors = scope->db_ns = 0;
    scope->texts = PyDict_New();
    scope->dialects = PyDict_New();
    PyObject *parent = NULL;
    if (scope->texts == NULL || scope->dialects == NULL
        || PyContextVar_Get(qm_scope_var, NULL, &parent) < 0) {
        Py_DECREF(scope);
        return NULL;
    }
    scope->parent = (ScopeObject *)parent;
    PyObject_GC_Track(scope);
    PyObject *token = PyContextVar_Set(qm_scope_var, (PyObject *)scope);
    if (token == NULL) {
        Py_DECREF(scope);
        return NULL;
    }
    qm_scopes_open += 1;
    return Py_BuildValue("(NN)", scope, token);
}

/* _exit_scope(token): back to the scope that was current at its enter. */
static PyObject *
module_exit_scope(PyObject *Py_UNUSED(module), PyObject *token)
{
    if (PyContextVar_Reset(qm_scope_var, token) < 0) {
        return NULL;
    }
    qm_scopes_open -= 1;
    Py_RETURN_NONE;
}

static PyObject *
module_current_scope(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    PyObject *value = NULL;
    if (PyContextVar_Get(qm_scope_var, Py_None, &value) < 0) {
        return NULL;
    }
    return value;
}

static PyMethodDef module_methods[] = {
    {"_set_enabled", (PyCFunction)module_set_enabled, METH_O,
     PyDoc_STR("_set_enabled(flag) -> None\n\nThe kill switch: while off, no query begins.")},
    {"_enabled", (PyCFunction)module_enabled, METH_NOARGS,
     PyDoc_STR("_enabled() -> bool\n\nWhether queries are counted.")},
    {"_enter_scope", (PyCFunction)(void (*)(void))module_enter_scope, METH_FASTCALL,
     PyDoc_STR("_enter_scope(focus, tags) -> (scope, token)\n\nA new innermost scope.")},
    {"_exit_scope", (PyCFunction)module_exit_scope, METH_O,
     PyDoc_STR("_exit_scope(token) -> None\n\nBack to the scope current at its enter.")},
#ifdef QM_HAVE_SHM
    {"_shared_claim", (PyCFunction)(void (*)(void))module_shared_claim, METH_FASTCALL,
     PyDoc_STR("_shared_claim(mapping, fd, pid, start_ticks, wall_ns) -> (slot, generation) "
               "or None")},
    {"_shared_settle", (PyCFunction)(void (*)(void))module_shared_settle, METH_FASTCALL,
     PyDoc_STR("_shared_settle(mapping, fd, slot, generation, dead) -> int")},
    {"_shared_read", (PyCFunction)(void (*)(void))module_shared_read, METH_FASTCALL,
     PyDoc_STR("_shared_read(mapping, fd) -> (service, slots, (lock_steals, reaped_slots, "
               "reaped_queries))")},
#endif
    {"_current_scope", (PyCFunction)module_current_scope, METH_NOARGS,
     PyDoc_STR("_current_scope() -> Scope | None\n\nThe innermost scope of the context.")},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, (void *)module_exec},
    {0, NULL},
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "querymeter.core._c",
    .m_doc = "The counters in C: the hot path of every query.",
    .m_size = sizeof(module_state),
    .m_slots = module_slots,
    .m_methods = module_methods,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC
PyInit__c(void)
{
    return PyModuleDef_Init(&core_module);
}
