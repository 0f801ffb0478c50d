/* An x86-64 CPU's peak arithmetic rate, the ceiling of any fp32 or bfloat16 implementation of
   a model.

   Measures the clock (a chain of dependent adds, one a cycle) and, on one core and on every
   online core, how fast fused multiply-adds run with enough independent accumulators to hide
   their latency: float32 FMA (AVX-512, else AVX2) and, where the CPU has AVX512-BF16, the
   bfloat16 dot product VDPBF16PS (two products summed into float32 per lane). Prints JSON.

       gcc -O3 -march=native -pthread benchmarks/cpu_peak.c -o /tmp/cpu_peak && /tmp/cpu_peak

   An optional argument scales the work (default 1.0, about two seconds in all). */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define ACCUMULATORS 12

static long iterations;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* Sixteen dependent adds a loop step, one a cycle, so the loop's own work is hidden. */
static double clock_ghz(void) {
    long x = 0;
    double t = now();
    for (long i = 0; i < iterations; i++)
        __asm__ volatile(
            "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
            "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
            "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
            "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0"
            : "+r"(x));
    return 16.0 * iterations / (now() - t) / 1e9;
}

#if defined(__AVX512F__)
#define VECTOR __m512
#define LANES 16
#define SPLAT _mm512_set1_ps
#define FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define STORE _mm512_storeu_ps
#define ISA "AVX-512"
#else
#define VECTOR __m256
#define LANES 8
#define SPLAT _mm256_set1_ps
#define FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define STORE _mm256_storeu_ps
#define ISA "AVX2"
#endif

/* Each worker returns, through its argument, a sum of its accumulators so that none is dead. */
static void *fp32_worker(void *out) {
    VECTOR acc[ACCUMULATORS], b = SPLAT(1.0000001f), c = SPLAT(1e-7f);
    for (int j = 0; j < ACCUMULATORS; j++) acc[j] = SPLAT((float)j);
    for (long i = 0; i < iterations; i++)
        for (int j = 0; j < ACCUMULATORS; j++) acc[j] = FMA(acc[j], b, c);
    float lanes[LANES];
    for (int j = 1; j < ACCUMULATORS; j++) acc[0] = FMA(acc[j], b, acc[0]);
    STORE(lanes, acc[0]);
    *(float *)out = lanes[0];
    return NULL;
}

#if defined(__AVX512BF16__)
static void *bf16_worker(void *out) {
    __m512 acc[ACCUMULATORS];
    __m512bh a = _mm512_cvtne2ps_pbh(_mm512_set1_ps(0.5f), _mm512_set1_ps(0.25f));
    __m512bh b = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3f), _mm512_set1_ps(2e-3f));
    for (int j = 0; j < ACCUMULATORS; j++) acc[j] = _mm512_set1_ps((float)j);
    for (long i = 0; i < iterations; i++)
        for (int j = 0; j < ACCUMULATORS; j++) acc[j] = _mm512_dpbf16_ps(acc[j], a, b);
    for (int j = 1; j < ACCUMULATORS; j++) acc[0] = _mm512_add_ps(acc[0], acc[j]);
    *(float *)out = _mm512_reduce_add_ps(acc[0]);
    return NULL;
}
#endif

/* GFLOP/s of `threads` workers, each doing `flops_per_step` in each of its steps. */
static double rate(void *(*worker)(void *), int threads, double flops_per_step) {
    pthread_t ids[threads];
    float sums[threads];
    double t = now();
    for (int i = 0; i < threads; i++) pthread_create(&ids[i], NULL, worker, &sums[i]);
    for (int i = 0; i < threads; i++) pthread_join(ids[i], NULL);
    return threads * iterations * ACCUMULATORS * flops_per_step / (now() - t) / 1e9;
}

int main(int argc, char **argv) {
    double scale = argc > 1 ? atof(argv[1]) : 1.0;
    if (!(scale > 0)) {
        fprintf(stderr, "cpu_peak: the argument scales the work and must be > 0, got %s\n",
                argv[1]);
        return 2;
    }
    iterations = (long)(1e8 * scale) + 1;
    int cores = (int)sysconf(_SC_NPROCESSORS_ONLN);
    double ghz = clock_ghz();
    double fp32_one = rate(fp32_worker, 1, 2.0 * LANES);
    double fp32_all = rate(fp32_worker, cores, 2.0 * LANES);
    printf("{\n  \"cores\": %d,\n  \"clock_ghz\": %.2f,\n", cores, ghz);
    printf("  \"fp32_isa\": \"%s\",\n", ISA);
    printf("  \"fp32_gflops_one_core\": %.1f,\n", fp32_one);
    printf("  \"fp32_flop_per_cycle\": %.1f,\n", fp32_one / ghz);
    printf("  \"fp32_gflops_all_cores\": %.1f", fp32_all);
#if defined(__AVX512BF16__)
    /* 16 lanes, each two bfloat16 products added to a float32: 64 FLOP an instruction. */
    double bf16_one = rate(bf16_worker, 1, 64.0), bf16_all = rate(bf16_worker, cores, 64.0);
    printf(",\n  \"bf16_gflops_one_core\": %.1f,\n", bf16_one);
    printf("  \"bf16_flop_per_cycle\": %.1f,\n", bf16_one / ghz);
    printf("  \"bf16_gflops_all_cores\": %.1f", bf16_all);
#endif
    printf("\n}\n");
    return 0;
}
