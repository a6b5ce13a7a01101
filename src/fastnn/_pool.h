/* A small pool of helper threads for the kernels' parallel regions.
 *
 * fastnn_pool_run(ntasks, fn, ctx) runs fn(ctx, t) for t = 0..ntasks-1
 * (ntasks <= FASTNN_POOL_MAX_TASKS) and returns when all have finished.
 * Thread h of T (the caller is 0, helpers 1..T-1) first claims "its" tasks
 * h, h + T, h + 2T, ..., then any task still unclaimed, from the last one
 * down. So while every thread keeps up, task t runs on the same thread in
 * every region, and the data a task owns (a block of weights and velocities)
 * stays in that core's cache from step to step. Nobody waits for a helper
 * that has not started: if the other cores are busy, the caller simply runs
 * every task, so a loaded machine costs at most the tasks a helper has
 * already claimed. The caller spins briefly for those, then sleeps (which
 * lets the OS run a preempted helper on the caller's core). Helpers spin
 * briefly after each region, then sleep until the next.
 * Tasks must write disjoint memory; which thread runs a task never changes
 * its result, so a run is reproducible bit for bit (the callers choose the
 * blocks from the problem and the thread count, never from timing).
 *
 * Claiming uses one 64-bit word, state = (seq << 32) | mask of claimed tasks.
 * A job is published by making seq odd (closed), writing its fields, then
 * making seq even with an empty mask; a helper reads the fields between two
 * reads of an equal even seq (a seqlock) and claims a task with a
 * compare-and-swap that also checks seq, so it never runs a task of a job
 * whose fields it did not read.
 *
 * One region runs at a time: a second thread of the process that calls
 * fastnn_pool_run meanwhile (or a task that calls it) runs its tasks inline.
 * After fork() the child starts with no helpers (they are re-created on use).
 * Without POSIX threads (MSVC) every region runs inline.
 */
#ifndef FASTNN_POOL_H
#define FASTNN_POOL_H

typedef void (*fastnn_task_fn)(void *ctx, int task);

#define FASTNN_POOL_MAX_TASKS 32
#define FASTNN_POOL_MAX_THREADS 8

#if !defined(_WIN32) && (defined(__GNUC__) || defined(__clang__))
#define FASTNN_HAVE_POOL 1
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FASTNN_SPIN_PAUSE() _mm_pause()
#elif defined(__aarch64__)
#define FASTNN_SPIN_PAUSE() __asm__ __volatile__("yield")
#else
#define FASTNN_SPIN_PAUSE() ((void)0)
#endif

#define FP_LOAD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define FP_STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)

/* how long an idle helper spins before it sleeps, and how long the caller
 * spins for claimed tasks before it sleeps, in nanoseconds */
#define FASTNN_POOL_IDLE_SPIN_NS 300000L
#define FASTNN_POOL_WAIT_SPIN_NS 20000L

static struct {
    uint64_t state;             /* (seq << 32) | mask of claimed tasks */
    int done;                   /* tasks finished in the current job */
    fastnn_task_fn fn;          /* the current job (valid while seq is even) */
    void *ctx;
    int ntasks;
    int nthreads;               /* threads of the current job */
    int busy;                   /* a region is running */
    int threads;                /* threads used by a region, caller included */
    int started;                /* helpers created */
    int sleepers;               /* helpers asleep (or about to sleep) */
    int caller_waiting;         /* the caller sleeps until done == ntasks */
    long tasks_run[2];          /* tasks run by callers / by helpers (statistics) */
    pthread_mutex_t mu;
    pthread_cond_t wake;        /* helpers: a job was published */
    pthread_cond_t finished;    /* caller: the last claimed task finished */
} fastnn_pool = {0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, {0, 0}, PTHREAD_MUTEX_INITIALIZER,
                 PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER};

/* The pool's index of the calling thread: h in helper h, 0 in any other thread */
static __thread int fastnn_pool_me = 0;
static int fastnn_pool_self(void) { return fastnn_pool_me; }

static long fastnn_pool_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000000000L + ts.tv_nsec;
}

/* Claim task t of job seq: 1 claimed, 0 taken by another thread, -1 the job is over. */
static int fastnn_pool_claim(uint32_t seq, int t)
{
    uint64_t s = FP_LOAD(&fastnn_pool.state);
    uint64_t bit = (uint64_t)1 << t;
    for (;;) {
        if ((uint32_t)(s >> 32) != seq) return -1;
        if (s & bit) return 0;
        if (__atomic_compare_exchange_n(&fastnn_pool.state, &s, s | bit, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE))
            return 1;
    }
}

static void fastnn_pool_finish_task(int ntasks)
{
    if (__atomic_add_fetch(&fastnn_pool.done, 1, __ATOMIC_SEQ_CST) == ntasks &&
        __atomic_load_n(&fastnn_pool.caller_waiting, __ATOMIC_SEQ_CST)) {
        pthread_mutex_lock(&fastnn_pool.mu);
        pthread_cond_broadcast(&fastnn_pool.finished);
        pthread_mutex_unlock(&fastnn_pool.mu);
    }
}

/* Thread h runs task t of job seq if it can claim it; -1 when the job is over. */
static int fastnn_pool_try(uint32_t seq, fastnn_task_fn fn, void *ctx, int ntasks, int h, int t)
{
    int r = fastnn_pool_claim(seq, t);
    if (r > 0) {
        fn(ctx, t);
        __atomic_add_fetch(&fastnn_pool.tasks_run[h > 0], 1, __ATOMIC_RELAXED);
        fastnn_pool_finish_task(ntasks);
    }
    return r;
}

/* Thread h's share of job seq: its own tasks, then whatever is left (from the end). */
static void fastnn_pool_work(uint32_t seq, fastnn_task_fn fn, void *ctx, int ntasks, int h,
                             int nthreads)
{
    int t;
    for (t = h; t < ntasks; t += nthreads)
        if (fastnn_pool_try(seq, fn, ctx, ntasks, h, t) < 0) return;
    for (t = ntasks - 1; t >= 0; t--)
        if (fastnn_pool_try(seq, fn, ctx, ntasks, h, t) < 0) return;
}

/* Whether job state s is open, new to a helper that last saw seq `seen`, and has work for helper h. */
static int fastnn_pool_has_work(uint64_t s, uint32_t seen, int h)
{
    uint32_t seq = (uint32_t)(s >> 32);
    int n = FP_LOAD(&fastnn_pool.ntasks);
    uint64_t all = n >= 64 ? ~(uint64_t)0 : (((uint64_t)1 << n) - 1);
    return !(seq & 1) && seq != seen && h < FP_LOAD(&fastnn_pool.nthreads) &&
           ((uint32_t)s & all) != (uint32_t)all;
}

static void *fastnn_pool_helper(void *arg)
{
    int h = (int)(intptr_t)arg;
    uint32_t seen = 0;
    fastnn_pool_me = h;
    for (;;) {
        long idle_since = fastnn_pool_now_ns();
        int spins = 0;
        for (;;) {
            uint64_t s = FP_LOAD(&fastnn_pool.state);
            if (fastnn_pool_has_work(s, seen, h)) {
                uint32_t seq = (uint32_t)(s >> 32);
                fastnn_task_fn fn = FP_LOAD(&fastnn_pool.fn);
                void *ctx = FP_LOAD(&fastnn_pool.ctx);
                int ntasks = FP_LOAD(&fastnn_pool.ntasks);
                int nthreads = FP_LOAD(&fastnn_pool.nthreads);
                __atomic_thread_fence(__ATOMIC_ACQUIRE);
                if ((uint32_t)(FP_LOAD(&fastnn_pool.state) >> 32) == seq) {
                    fastnn_pool_work(seq, fn, ctx, ntasks, h, nthreads);
                    seen = seq;
                    idle_since = fastnn_pool_now_ns();
                }
                continue;
            }
            FASTNN_SPIN_PAUSE();
            if (++spins % 256 == 0 && fastnn_pool_now_ns() - idle_since > FASTNN_POOL_IDLE_SPIN_NS)
                break;
        }
        /* idle: sleep until a job is published */
        pthread_mutex_lock(&fastnn_pool.mu);
        __atomic_add_fetch(&fastnn_pool.sleepers, 1, __ATOMIC_SEQ_CST);
        while (!fastnn_pool_has_work(__atomic_load_n(&fastnn_pool.state, __ATOMIC_SEQ_CST), seen, h))
            pthread_cond_wait(&fastnn_pool.wake, &fastnn_pool.mu);
        __atomic_sub_fetch(&fastnn_pool.sleepers, 1, __ATOMIC_SEQ_CST);
        pthread_mutex_unlock(&fastnn_pool.mu);
    }
    return NULL;
}

static void fastnn_pool_after_fork_child(void)
{
    /* the helpers do not exist in the child */
    pthread_mutex_init(&fastnn_pool.mu, NULL);
    pthread_cond_init(&fastnn_pool.wake, NULL);
    pthread_cond_init(&fastnn_pool.finished, NULL);
    fastnn_pool.started = 0;
    fastnn_pool.sleepers = 0;
    fastnn_pool.caller_waiting = 0;
    fastnn_pool.busy = 0;
}

/* Start helpers number first..last; returns how many were made. */
static int fastnn_pool_start(int first, int last)
{
    static int atfork_done = 0;
    int h, made = 0;
    pthread_attr_t attr;
    if (!atfork_done) {
        pthread_atfork(NULL, NULL, fastnn_pool_after_fork_child);
        atfork_done = 1;
    }
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    for (h = first; h <= last; h++) {
        pthread_t t;
        if (pthread_create(&t, &attr, fastnn_pool_helper, (void *)(intptr_t)h) != 0) break;
        made++;
    }
    pthread_attr_destroy(&attr);
    return made;
}

static void fastnn_pool_run(int ntasks, fastnn_task_fn fn, void *ctx)
{
    int t, nthreads = fastnn_pool.threads;
    uint64_t s;
    uint32_t seq;
    if (ntasks <= 0) return;
    if (ntasks == 1 || nthreads <= 1 || ntasks > FASTNN_POOL_MAX_TASKS ||
        __atomic_exchange_n(&fastnn_pool.busy, 1, __ATOMIC_ACQUIRE)) {
        for (t = 0; t < ntasks; t++) fn(ctx, t);
        return;
    }
    if (fastnn_pool.started < nthreads - 1)
        fastnn_pool.started += fastnn_pool_start(fastnn_pool.started + 1, nthreads - 1);
    if (nthreads > fastnn_pool.started + 1) nthreads = fastnn_pool.started + 1;
    /* close (odd seq), write the job, open it (even seq, nothing claimed) */
    s = FP_LOAD(&fastnn_pool.state);
    seq = (uint32_t)(s >> 32) + 1;
    __atomic_store_n(&fastnn_pool.state, (uint64_t)seq << 32, __ATOMIC_SEQ_CST);
    FP_STORE(&fastnn_pool.fn, fn);
    FP_STORE(&fastnn_pool.ctx, ctx);
    FP_STORE(&fastnn_pool.ntasks, ntasks);
    FP_STORE(&fastnn_pool.nthreads, nthreads);
    FP_STORE(&fastnn_pool.done, 0);
    seq += 1;
    __atomic_store_n(&fastnn_pool.state, (uint64_t)seq << 32, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&fastnn_pool.sleepers, __ATOMIC_SEQ_CST) > 0) {
        pthread_mutex_lock(&fastnn_pool.mu);
        pthread_cond_broadcast(&fastnn_pool.wake);
        pthread_mutex_unlock(&fastnn_pool.mu);
    }
    fastnn_pool_work(seq, fn, ctx, ntasks, 0, nthreads);
    /* wait for the tasks helpers claimed: spin a little, then sleep */
    if (FP_LOAD(&fastnn_pool.done) < ntasks) {
        long start = fastnn_pool_now_ns();
        int spins = 0;
        while (FP_LOAD(&fastnn_pool.done) < ntasks) {
            FASTNN_SPIN_PAUSE();
            if (++spins % 64 == 0 && fastnn_pool_now_ns() - start > FASTNN_POOL_WAIT_SPIN_NS) {
                pthread_mutex_lock(&fastnn_pool.mu);
                __atomic_store_n(&fastnn_pool.caller_waiting, 1, __ATOMIC_SEQ_CST);
                while (__atomic_load_n(&fastnn_pool.done, __ATOMIC_SEQ_CST) < ntasks)
                    pthread_cond_wait(&fastnn_pool.finished, &fastnn_pool.mu);
                __atomic_store_n(&fastnn_pool.caller_waiting, 0, __ATOMIC_SEQ_CST);
                pthread_mutex_unlock(&fastnn_pool.mu);
                break;
            }
        }
    }
    __atomic_store_n(&fastnn_pool.busy, 0, __ATOMIC_RELEASE);
}

static int fastnn_pool_cpu_count(void)
{
#if defined(__linux__) && defined(CPU_COUNT)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) return CPU_COUNT(&set);
#endif
    {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        return n > 0 ? (int)n : 1;
    }
}

#else /* no POSIX threads: every region runs in the caller */
#define FASTNN_HAVE_POOL 0
static struct { int threads; } fastnn_pool = {1};
static void fastnn_pool_run(int ntasks, fastnn_task_fn fn, void *ctx)
{
    int t;
    for (t = 0; t < ntasks; t++) fn(ctx, t);
}
static int fastnn_pool_cpu_count(void) { return 1; }
static int fastnn_pool_self(void) { return 0; }
static long fastnn_pool_now_ns(void) { return 0; }
#endif

/* Threads a region may use (caller included), clamped to [1, FASTNN_POOL_MAX_THREADS]
 * (1 where there is no pool). Returns the value in effect. Call while no region runs. */
static int fastnn_pool_set_threads(int n)
{
    if (n < 1) n = 1;
    if (n > FASTNN_POOL_MAX_THREADS) n = FASTNN_POOL_MAX_THREADS;
    if (!FASTNN_HAVE_POOL) n = 1;
    fastnn_pool.threads = n;
    return n;
}

static int fastnn_pool_get_threads(void) { return fastnn_pool.threads; }

/* Tasks of pooled regions run so far by the calling threads (who = 0) or by helpers (1). */
static long fastnn_pool_tasks_run(int who)
{
#if FASTNN_HAVE_POOL
    return __atomic_load_n(&fastnn_pool.tasks_run[who != 0], __ATOMIC_RELAXED);
#else
    (void)who;
    return 0;
#endif
}

#endif
