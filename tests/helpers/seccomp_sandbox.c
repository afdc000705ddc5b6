/* Run a command under a unit's SystemCallFilter= and MemoryDenyWriteExecute=, as systemd 252
 * applies them (tests/test_deployment.py builds this; no systemd runs as PID 1 here).
 *
 *   seccomp_sandbox ALLOWLIST mdwe|- COMMAND [ARG...]
 *
 * ALLOWLIST: a file of syscall names (the unit's filter, expanded by systemd-analyze). Any other
 * syscall fails with EPERM (SystemCallErrorNumber=EPERM). "mdwe": a second filter like systemd's
 * MemoryDenyWriteExecute=yes: EPERM for mmap with PROT_WRITE|PROT_EXEC, for mprotect and
 * pkey_mprotect adding PROT_EXEC, and for shmat with SHM_EXEC. Then exec COMMAND.
 * Needs libseccomp (Debian: libseccomp-dev). */
#include <errno.h>
#include <seccomp.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s ALLOWLIST mdwe|- COMMAND [ARG...]\n", argv[0]);
        return 2;
    }
    scmp_filter_ctx allow = seccomp_init(SCMP_ACT_ERRNO(EPERM));
    FILE *f = fopen(argv[1], "r");
    if (!allow || !f) {
        perror(argv[1]);
        return 2;
    }
    char name[128];
    while (fscanf(f, "%127s", name) == 1) {
        int nr = seccomp_syscall_resolve_name(name);
        if (nr != __NR_SCMP_ERROR) /* names of other architectures (arm_fadvise64_64, ...) */
            seccomp_rule_add(allow, SCMP_ACT_ALLOW, nr, 0);
    }
    fclose(f);
    if (strcmp(argv[2], "mdwe") == 0) {
        scmp_filter_ctx mdwe = seccomp_init(SCMP_ACT_ALLOW);
        int wx = PROT_WRITE | PROT_EXEC;
        if (!mdwe ||
            seccomp_rule_add(mdwe, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(mmap), 1,
                             SCMP_A2(SCMP_CMP_MASKED_EQ, wx, wx)) ||
            seccomp_rule_add(mdwe, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(mprotect), 1,
                             SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC)) ||
            seccomp_rule_add(mdwe, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(pkey_mprotect), 1,
                             SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC)) ||
            seccomp_rule_add(mdwe, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(shmat), 1,
                             SCMP_A2(SCMP_CMP_MASKED_EQ, SHM_EXEC, SHM_EXEC)) ||
            seccomp_load(mdwe)) {
            fprintf(stderr, "seccomp: cannot load the MemoryDenyWriteExecute filter\n");
            return 2;
        }
    }
    if (seccomp_load(allow)) {
        fprintf(stderr, "seccomp: cannot load the syscall filter\n");
        return 2;
    }
    execvp(argv[3], argv + 3);
    perror(argv[3]);
    return 127;
}
