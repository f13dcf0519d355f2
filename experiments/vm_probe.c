/* What this machine gives one core from moment to moment: a sample a second (after a 1 s pause)
 * of three rates, to tell apart the causes of a VM's fast and slow spells.
 *   fma_gflops:  AVX-512 fused multiply-adds on 12 register-resident accumulators (no memory
 *                traffic): the vector units' throughput, what a matrix product's inner loop needs;
 *   scalar_gops: a dependent chain of integer multiplies, xors and shifts (one core's scalar
 *                latency: what an interpreter's work looks like);
 *   mem_gbs:     a read of a 42 MB buffer (the size of MiniLM's float32 weights), mean of five.
 * If fma_gflops dips while scalar_gops holds, the spells take vector throughput (another tenant on
 * the same physical core, a lower AVX frequency); if only mem_gbs dips, memory bandwidth.
 *
 * build: gcc -O3 -funroll-loops -march=native -o vm_probe experiments/vm_probe.c
 * run:   taskset -c 1 ./vm_probe SECONDS > samples.txt    (one line per sample, header first)
 * Needs an x86-64 CPU with AVX-512F. Nothing else should run meanwhile. */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static double fma_rate(long iters) {
  __m512 acc[12];
  const __m512 x = _mm512_set1_ps(1.0000001f), y = _mm512_set1_ps(1e-7f);
  for (int i = 0; i < 12; i++) acc[i] = _mm512_set1_ps((float)i);
  double t0 = now();
  for (long k = 0; k < iters; k++)
    for (int i = 0; i < 12; i++) acc[i] = _mm512_fmadd_ps(acc[i], x, y);
  double t = now() - t0;
  float s = 0;
  for (int i = 0; i < 12; i++) s += _mm512_reduce_add_ps(acc[i]);
  if (s == 1234.5f) printf("#\n"); /* keeps the loop's result live */
  return iters * 12.0 * 32 / t / 1e9; /* 16 lanes x 2 flops per FMA */
}

static double scalar_rate(long iters) {
  volatile uint64_t sink;
  uint64_t v = 1;
  double t0 = now();
  for (long k = 0; k < iters; k++) {
    v = v * 6364136223846793005ULL + 1442695040888963407ULL;
    v ^= v >> 13;
  }
  sink = v;
  (void)sink;
  return iters / (now() - t0) / 1e9;
}

static double mem_rate(const float *buf, size_t n) {
  double t0 = now();
  __m512 s = _mm512_setzero_ps();
  for (size_t i = 0; i < n; i += 16) s = _mm512_add_ps(s, _mm512_load_ps(buf + i));
  if (_mm512_reduce_add_ps(s) == 1234.5f) printf("#\n");
  return n * 4.0 / (now() - t0) / 1e9;
}

int main(int argc, char **argv) {
  if (argc != 2 || atoi(argv[1]) <= 0) {
    fprintf(stderr, "usage: %s SECONDS\n", argv[0]);
    return 2;
  }
  const size_t n = 42u << 18; /* floats: 42 MiB */
  float *buf = aligned_alloc(64, n * sizeof(float));
  if (!buf) {
    fprintf(stderr, "cannot allocate 42 MiB\n");
    return 1;
  }
  for (size_t i = 0; i < n; i++) buf[i] = (float)i * 1e-9f;
  const double start = now(), end = start + atoi(argv[1]);
  printf("t fma_gflops scalar_gops mem_gbs\n");
  while (now() < end) {
    double f = fma_rate(2000000), s = scalar_rate(20000000), m = 0;
    for (int r = 0; r < 5; r++) m += mem_rate(buf, n) / 5;
    printf("%.0f %.1f %.3f %.1f\n", now() - start, f, s, m);
    fflush(stdout);
    struct timespec pause = {1, 0};
    nanosleep(&pause, NULL);
  }
  free(buf);
  return 0;
}
