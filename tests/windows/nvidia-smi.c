/* Stand-in for nvidia-smi.exe in the launch.bat tests under wine.
   FAKE_SMI_RC: exit code (default 0). FAKE_SMI_GPUS: the answer to
   --query-gpu=name,compute_cap,driver_version --format=csv,noheader, GPUs separated by ';'
   (default "NVIDIA GeForce RTX 4090, 8.9, 580.65"). FAKE_SMI_OLD=1: answer as a driver older than 510,
   which does not know the compute_cap field. -L lists the GPUs. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(int argc, char **argv) {
    const char *rc = getenv("FAKE_SMI_RC"), *gpus = getenv("FAKE_SMI_GPUS");
    int query = 0, list = 0;
    if (!gpus || !*gpus) gpus = "NVIDIA GeForce RTX 4090, 8.9, 580.65";
    for (int i = 1; i < argc; i++) {
        if (!strncmp(argv[i], "--query-gpu=", 12)) query = 1;
        if (!strcmp(argv[i], "-L")) list = 1;
    }
    if (rc && atoi(rc)) { printf("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n"); return atoi(rc); }
    if (query && getenv("FAKE_SMI_OLD")) {
        printf("Field \"compute_cap\" is not a valid field to query.\n\n");
        return 2;
    }
    int n = 0;
    for (const char *p = gpus; *p; n++) {
        const char *end = strchr(p, ';');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (query) printf("%.*s\n", (int)len, p);
        else if (list) { const char *comma = memchr(p, ',', len); printf("GPU %d: %.*s (UUID: GPU-0000000%d)\n", n, (int)(comma ? comma - p : len), p, n); }
        p += len; if (*p == ';') p++;
    }
    if (!query && !list) printf("Fake nvidia-smi\n");
    return 0;
}
