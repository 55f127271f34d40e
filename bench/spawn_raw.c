/*
 * The anchor of bench/spawn_bench.lua: spawn cost from plain C, as the
 * platform allows it.  Holds SIZE MiB of touched memory in 1 MiB blocks (as
 * the Lua measuring parent does), then starts PROG REPS times, one after
 * another, each timed from the spawn call to waitpid's return:
 *   spawn_raw posix SIZE REPS PROG   posix_spawnp (glibc: CLONE_VM|CLONE_VFORK)
 *   spawn_raw fork SIZE REPS PROG    fork + execvp (what uv_spawn does)
 * Prints "rss_kb=N t1 t2 ..." (ms), the first, warm-up spawn left out.
 * Build: cc -O2 -o build/spawn_raw bench/spawn_raw.c
 */
#define _GNU_SOURCE
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

int main(int argc, char **argv) {
  int use_fork, reps;
  long size;
  char **hold, *args[2], line[256];
  FILE *f;
  if (argc != 5) {
    fprintf(stderr, "usage: spawn_raw posix|fork SIZE_MIB REPS PROG\n");
    return 2;
  }
  use_fork = strcmp(argv[1], "fork") == 0;
  size = atol(argv[2]);
  reps = atoi(argv[3]);
  args[0] = argv[4];
  args[1] = NULL;
  hold = calloc((size_t)size + 1, sizeof *hold);
  for (long i = 0; i < size; i++) {
    if ((hold[i] = malloc(1 << 20)) == NULL) return 1;
    memset(hold[i], (int)(65 + i % 26), 1 << 20);
  }
  f = fopen("/proc/self/status", "r");
  while (f != NULL && fgets(line, sizeof line, f) != NULL)
    if (strncmp(line, "VmRSS:", 6) == 0) printf("rss_kb=%ld", atol(line + 6));
  if (f != NULL) fclose(f);
  for (int r = 0; r <= reps; r++) {
    double t0 = now_ms();
    pid_t pid;
    int st;
    if (use_fork) {
      if ((pid = fork()) == 0) {
        execvp(args[0], args);
        _exit(127);
      }
      if (pid < 0) return 1;
    } else if (posix_spawnp(&pid, args[0], NULL, NULL, args, environ) != 0) {
      return 1;
    }
    if (waitpid(pid, &st, 0) != pid || st != 0) return 1;
    if (r > 0) printf(" %.4f", now_ms() - t0);
  }
  printf("\n");
  for (long i = 0; i < size; i++) free(hold[i]);
  free(hold);
  return 0;
}
