/* LD_PRELOAD shim for the lab's sanlock daemons only (see README.md).
 *
 * The lab's VMs lack CAP_SYS_RESOURCE, so sanlock's attempt to raise its
 * memlock/rtprio/core limits fails with EPERM and the daemon exits ("cannot
 * set the limits for memlock"). On EPERM, retry with the soft limit raised
 * only as far as the current hard limit allows. A real host needs no shim.
 *
 * Build: cc -shared -fPIC -o sanlock-rlimit-shim.so sanlock-rlimit-shim.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <sys/resource.h>
#include <stddef.h>
#include <sys/types.h>

typedef int (*prlimit_fn)(pid_t, enum __rlimit_resource, const struct rlimit64 *, struct rlimit64 *);

int prlimit64(pid_t pid, enum __rlimit_resource res, const struct rlimit64 *new, struct rlimit64 *old)
{
    static prlimit_fn real;
    struct rlimit64 cur, capped;
    int rv;

    if (!real && !(real = (prlimit_fn)dlsym(RTLD_NEXT, "prlimit64"))) {
        errno = ENOSYS;
        return -1;
    }
    rv = real(pid, res, new, old);
    if (rv == 0 || errno != EPERM || !new || real(pid, res, NULL, &cur) != 0)
        return rv;
    capped.rlim_max = cur.rlim_max;
    capped.rlim_cur = new->rlim_cur < cur.rlim_max ? new->rlim_cur : cur.rlim_max;
    return real(pid, res, &capped, old);
}

int setrlimit64(__rlimit_resource_t res, const struct rlimit64 *rl)
{
    return prlimit64(0, res, rl, NULL);
}

int setrlimit(__rlimit_resource_t res, const struct rlimit *rl)
{
    struct rlimit64 r = { rl->rlim_cur, rl->rlim_max };
    return prlimit64(0, res, &r, NULL);
}
