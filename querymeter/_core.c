/* querymeter._core: the counters in C, the hot path of every query.

   Only what runs per query lives here: begin/end accounting, the consistent
   read, the `with` tracker and the call wrapper that the hooks install.  All API
   logic is Python; _core_py.py is the twin that must behave identically.

   Thread safety: every critical section runs with the GIL held and makes no
   call into Python between reading the clock and updating the counters, so it
   is atomic with respect to every other thread.  The module does not declare
   free-threading support (no Py_mod_gil slot), so a free-threaded interpreter
   turns the GIL back on when it imports it. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>  /* PyMemberDef, T_PYSSIZET, READONLY on 3.11 */
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#if !defined(__SIZEOF_INT128__)
#error "querymeter._core needs a compiler with 128-bit integers (gcc or clang); the pure-Python core is used instead"
#endif

typedef unsigned __int128 qm_u128;

/* The counter state.  A plain fixed-layout struct without Python objects, so
   that it can later live in shared memory and be updated with C11 atomics. */
typedef struct {
    int64_t start_ns;     /* clock reading when the meter started */
    int64_t stamp_ns;     /* last clock reading that advanced busy/total */
    int64_t concurrency;  /* queries executing now */
    uint64_t queries;     /* completed queries */
    uint64_t errors;      /* of those, the ones that raised */
    uint64_t busy_ns;     /* time with at least one query running, up to stamp */
    qm_u128 total_ns;     /* sum of response times, up to stamp; 128 bits so
                             that 100 years at concurrency 10,000 stays exact */
} qm_counters;

typedef struct {
    PyTypeObject *meter_type;
    PyTypeObject *token_type;
    PyTypeObject *tracker_type;
    PyTypeObject *timed_type;
} module_state;

typedef struct {
    PyObject_HEAD
    qm_counters c;
    uint64_t serial;   /* tells this meter's tokens from other meters' */
    uint64_t epoch;    /* advanced by _reset() after fork: older tokens go inert */
    uint64_t meter_id; /* identity stamped on every reading; new after fork */
    PyObject *clock;   /* NULL: the built-in monotonic clock */
    int initialized;
    PyTypeObject *token_type;    /* cached: no module-state lookup per query */
    PyTypeObject *tracker_type;
    PyTypeObject *timed_type;
    PyObject *weakreflist;
} MeterObject;

typedef struct {
    PyObject_HEAD
    uint64_t serial;
    uint64_t epoch;
    int64_t start_ns;
    int ended;
} TokenObject;

typedef struct {
    PyObject_HEAD
    MeterObject *meter;
    int64_t start_ns;
    uint64_t epoch;
    int64_t elapsed_ns;  /* -1 until a block has ended */
    int entered;
} TrackerObject;

typedef struct {
    PyObject_HEAD
    MeterObject *meter;
    PyObject *func;
    vectorcallfunc func_vectorcall;
    PyObject *dict;
    PyObject *weakreflist;
    vectorcallfunc vectorcall;
} TimedObject;

static struct PyModuleDef core_module;

/* Serials come from one counter for the whole process, never from addresses:
   a dead meter's address can be reused, and its stale tokens must not match. */
static uint64_t next_serial = 1;

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
   logs once per cause and counts.  Never raises: a fault here must not reach
   the application either.  Expects no exception to be set. */
static void
report_fault(const char *cause, PyObject *exc)
{
    PyObject *faults = PyImport_ImportModule("querymeter._faults");
    if (faults == NULL) {
        PyErr_Clear();
        return;
    }
    PyObject *res = PyObject_CallMethod(faults, "report", "sO", cause,
                                        exc ? exc : Py_None);
    Py_DECREF(faults);
    if (res == NULL) {
        PyErr_Clear();
    }
    Py_XDECREF(res);
}

/* The reading of an injected clock.  A clock that raises or returns something
   other than an int that fits in 64 bits is a fault: the reading counts as "no
   time passed" (INT64_MIN, which the caller clamps to the stamp), so the
   counters stay consistent and nothing is raised.  Preserves an exception that
   is already set: end() runs while the driver's exception is in flight. */
static int64_t
user_clock_ns(PyObject *clock)
{
    PyObject *pending_type, *pending_value, *pending_tb;
    PyErr_Fetch(&pending_type, &pending_value, &pending_tb);

    int64_t now = INT64_MIN;
    PyObject *reading = PyObject_CallNoArgs(clock);
    if (reading == NULL) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        report_fault("clock raised", value);
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
    }
    else if (!PyLong_Check(reading)) {
        PyObject *exc = PyObject_CallFunction(
            PyExc_TypeError, "s", "the clock must return int nanoseconds");
        report_fault("clock returned a non-int", exc);
        Py_XDECREF(exc);
        PyErr_Clear();
    }
    else {
        int overflow = 0;
        long long value = PyLong_AsLongLongAndOverflow(reading, &overflow);
        if (overflow) {
            PyObject *exc = PyObject_CallFunction(
                PyExc_OverflowError, "s", "the clock reading does not fit in 64 bits");
            report_fault("clock overflowed", exc);
            Py_XDECREF(exc);
            PyErr_Clear();
        }
        else {
            now = (int64_t)value;
        }
    }
    Py_XDECREF(reading);
    PyErr_Restore(pending_type, pending_value, pending_tb);
    return now;
}

/* A reading of the meter's clock.  May run Python code (an injected clock), so
   it is always taken before a critical section, never inside one. */
static inline int64_t
meter_clock(MeterObject *m)
{
    if (m->clock == NULL) {
        return monotonic_ns();
    }
    return user_clock_ns(m->clock);
}

/* ------------------------------------------------------- the accounting */

/* Clamps a reading to the stamp: readings taken in different threads (or from
   an injected clock) can arrive out of order, and time must not run back. */
static inline int64_t
clamp_to_stamp(qm_counters *c, int64_t now)
{
    return now < c->stamp_ns ? c->stamp_ns : now;
}

/* Brings busy and total up to `now` (already clamped). */
static inline void
advance(qm_counters *c, int64_t now)
{
    if (c->concurrency > 0) {
        uint64_t dt = (uint64_t)(now - c->stamp_ns);
        c->busy_ns += dt;
        c->total_ns += (qm_u128)dt * (uint64_t)c->concurrency;
    }
    c->stamp_ns = now;
}

/* Starts a query; returns its start time.  Critical section: no Python. */
static inline int64_t
counters_begin(qm_counters *c, int64_t now)
{
    now = clamp_to_stamp(c, now);
    advance(c, now);
    c->concurrency += 1;
    return now;
}

/* Ends a query that began at `start`; returns its elapsed time. */
static inline int64_t
counters_end(qm_counters *c, int64_t now, int64_t start, int error)
{
    now = clamp_to_stamp(c, now);
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
    return now > start ? now - start : 0;
}

static void
counters_start(qm_counters *c, int64_t now)
{
    memset(c, 0, sizeof(*c));
    c->start_ns = now;
    c->stamp_ns = now;
}

/* Elapsed time of a query whose meter was reset (fork) while it ran: the
   counters of the new epoch never saw it begin, so it must not end there. */
static inline int64_t
elapsed_since(int64_t now, int64_t start)
{
    return now > start ? now - start : 0;
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

/* ------------------------------------------------------------ MeterCore */

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
    self->serial = next_serial++;
    self->epoch = 0;
    self->meter_id = 0;
    self->initialized = 0;
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
    counters_start(&self->c, meter_clock(self));
    return 0;
}

static int
meter_traverse(MeterObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->clock);
    return 0;
}

static int
meter_clear(MeterObject *self)
{
    Py_CLEAR(self->clock);
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
    int64_t now = meter_clock(self);
    token->start_ns = counters_begin(&self->c, now);
    token->serial = self->serial;
    token->epoch = self->epoch;
    token->ended = 0;
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
    int64_t now = meter_clock(self);
    int64_t elapsed;
    if (token->epoch == self->epoch) {
        elapsed = counters_end(&self->c, now, token->start_ns, error);
    }
    else {
        elapsed = elapsed_since(now, token->start_ns);
    }
    return PyLong_FromLongLong(elapsed);
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

    int64_t now = meter_clock(self);
    /* The critical section: catch up to `now` exactly as begin would, on
       copies, without changing the state. */
    qm_counters *c = &self->c;
    now = clamp_to_stamp(c, now);
    uint64_t dt = (uint64_t)(now - c->stamp_ns);
    uint64_t busy = c->busy_ns;
    qm_u128 total = c->total_ns;
    if (c->concurrency > 0) {
        busy += dt;
        total += (qm_u128)dt * (uint64_t)c->concurrency;
    }
    int64_t uptime = now - c->start_ns;
    uint64_t queries = c->queries;
    uint64_t errors = c->errors;
    int64_t concurrency = c->concurrency;
    int64_t wall = wall_ns();
    uint64_t meter_id = self->meter_id;
    /* End of the critical section: only now build Python objects. */

    PyObject *items[8] = {
        PyLong_FromLongLong(uptime),
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
    int64_t now = meter_clock(self);
    counters_start(&self->c, now);
    self->epoch += 1;
    self->meter_id = (uint64_t)meter_id;
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
meter_track(MeterObject *self, PyObject *Py_UNUSED(ignored))
{
    TrackerObject *tracker = PyObject_GC_New(TrackerObject, self->tracker_type);
    if (tracker == NULL) {
        return NULL;
    }
    tracker->meter = (MeterObject *)Py_NewRef(self);
    tracker->start_ns = 0;
    tracker->epoch = 0;
    tracker->elapsed_ns = -1;
    tracker->entered = 0;
    PyObject_GC_Track(tracker);
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
    timed->dict = NULL;
    timed->weakreflist = NULL;
    timed->vectorcall = timed_vectorcall;
    PyObject_GC_Track(timed);
    return (PyObject *)timed;
}

static PyMethodDef meter_methods[] = {
    {"begin", (PyCFunction)meter_begin, METH_NOARGS,
     PyDoc_STR("begin() -> token\n\nStart a query; pass the token to end().")},
    {"end", (PyCFunction)(void (*)(void))meter_end, METH_FASTCALL | METH_KEYWORDS,
     PyDoc_STR("end(token, error=False) -> int\n\n"
               "End the query that begin() returned `token` for; return its elapsed ns.")},
    {"track", (PyCFunction)meter_track, METH_NOARGS,
     PyDoc_STR("track() -> context manager counting its block as one query.")},
    {"_timed", (PyCFunction)meter_timed, METH_O,
     PyDoc_STR("_timed(func) -> callable counting each call of func as one query.")},
    {"_read", (PyCFunction)meter_read, METH_O,
     PyDoc_STR("_read(cls) -> cls((uptime_ns, queries, errors, concurrency, "
               "total_ns, busy_ns, wall_ns, meter_id))")},
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
    .name = "querymeter._core.MeterCore",
    .basicsize = sizeof(MeterObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = meter_slots,
};

/* ---------------------------------------------------------------- Token */

static void
token_dealloc(TokenObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_Free(self);
    Py_DECREF(tp);
}

static PyObject *
token_repr(TokenObject *self)
{
    return PyUnicode_FromFormat("<querymeter token started at %lld ns%s>",
                                (long long)self->start_ns, self->ended ? ", ended" : "");
}

static PyType_Slot token_slots[] = {
    {Py_tp_doc, (void *)PyDoc_STR("A query in flight, returned by begin() and passed to end().")},
    {Py_tp_dealloc, (void *)token_dealloc},
    {Py_tp_repr, (void *)token_repr},
    {0, NULL},
};

/* Not a GC type: a token holds no references, so it cannot be part of a cycle. */
static PyType_Spec token_spec = {
    .name = "querymeter._core.Token",
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
    return 0;
}

static int
tracker_clear(TrackerObject *self)
{
    Py_CLEAR(self->meter);
    return 0;
}

static void
tracker_dealloc(TrackerObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
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
    self->elapsed_ns = -1;
    int64_t now = meter_clock(m);
    self->start_ns = counters_begin(&m->c, now);
    self->epoch = m->epoch;
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
    MeterObject *m = self->meter;
    int64_t start = self->start_ns;
    uint64_t epoch = self->epoch;
    self->entered = 0;
    int64_t now = meter_clock(m);
    if (epoch == m->epoch) {
        self->elapsed_ns = counters_end(&m->c, now, start, error);
    }
    else {
        self->elapsed_ns = elapsed_since(now, start);
    }
    /* Never suppress the block's exception. */
    Py_RETURN_FALSE;
}

static PyObject *
tracker_get_elapsed(TrackerObject *self, void *Py_UNUSED(closure))
{
    if (self->elapsed_ns < 0) {
        Py_RETURN_NONE;
    }
    return PyLong_FromLongLong(self->elapsed_ns);
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
    .name = "querymeter._core.Tracker",
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
    MeterObject *m = self->meter;
    int64_t start = counters_begin(&m->c, meter_clock(m));
    uint64_t epoch = m->epoch;

    PyObject *result;
    if (self->func_vectorcall != NULL) {
        result = self->func_vectorcall(self->func, args, nargsf, kwnames);
    }
    else {
        result = PyObject_Vectorcall(self->func, args, nargsf, kwnames);
    }

    int64_t now = meter_clock(m);
    if (epoch == m->epoch) {
        counters_end(&m->c, now, start, result == NULL);
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
    Py_VISIT(self->dict);
    return 0;
}

static int
timed_clear(TimedObject *self)
{
    Py_CLEAR(self->meter);
    Py_CLEAR(self->func);
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
    .name = "querymeter._core.Timed",
    .basicsize = sizeof(TimedObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL
             | Py_TPFLAGS_METHOD_DESCRIPTOR | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = timed_slots,
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
    if (!state->meter_type || !state->token_type || !state->tracker_type || !state->timed_type) {
        return -1;
    }
    if (PyModule_AddType(module, state->meter_type) < 0
        || PyModule_AddType(module, state->token_type) < 0
        || PyModule_AddType(module, state->tracker_type) < 0
        || PyModule_AddType(module, state->timed_type) < 0) {
        return -1;
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
    return 0;
}

static void
module_free(void *module)
{
    module_clear((PyObject *)module);
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, (void *)module_exec},
    {0, NULL},
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "querymeter._core",
    .m_doc = "The counters in C: the hot path of every query.",
    .m_size = sizeof(module_state),
    .m_slots = module_slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC
PyInit__core(void)
{
    return PyModuleDef_Init(&core_module);
}
