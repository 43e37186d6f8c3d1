"""The seccomp profile of every sandbox container: an allow-list of system calls.

Docker's default profile is an allow-list too, but it grants more where a capability is
held (`open_by_handle_at` with CAP_DAC_READ_SEARCH: the "shocker" escape) and allows
calls no job or runner needs (`name_to_handle_at`, `ptrace`, `modify_ldt`). This one
allows only what Python, numpy and PyTorch (CPU and CUDA) jobs and the runner use, with
no capability-gated extras, so it holds whatever capabilities a process has:

- never allowed: file handles (`open_by_handle_at`, `name_to_handle_at`), the kernel
  keyring, bpf, perf events, userfaultfd, io_uring, the mount family and namespaces
  (`mount`, `umount2`, `pivot_root`, `fsopen`..., `unshare`, `setns`), ptrace and
  cross-process memory (`process_vm_*`, `kcmp`, `pidfd_getfd`), modules, reboot, clock
  setting, `chroot`, `acct`, `swapon`, `quotactl`, `syslog`, `vhangup`, `iopl`;
- `clone` only without namespace flags; under runc `clone3` answers ENOSYS so libc falls
  back to `clone`, where the flags can be checked (clone3 passes them in memory, out of
  a filter's reach). gVisor ignores a rule's errno (it answers EPERM, and libc then
  gives up instead of falling back), so under runsc `clone3` goes to gVisor's own
  kernel, which answers ENOSYS itself, and whose namespaces are the sandbox's anyway;
- `socket` only for AF_UNIX, AF_INET, AF_INET6 and route netlink (what libc's
  interface and address lookups use; the network is `none`, so it shows only `lo`);
- `personality` only for the values Docker's profile allows.

Everything else fails with EPERM. Under gVisor the profile is enforced by the sentry when
runsc runs with `--oci-seccomp` (.ci/engine.sh registers it so; the executor refuses a
runsc without it).
"""

from __future__ import annotations

import json
from typing import Any

EPERM = 1
ENOSYS = 38
# Namespace flags clone() may not carry (CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC |
# NEWUSER | NEWPID | NEWNET | NEWTIME is 0x7E020080; Docker masks 0x7E020000).
CLONE_NAMESPACE_FLAGS = 0x7E020080
AF_UNIX, AF_INET, AF_INET6, AF_NETLINK = 1, 2, 10, 16
NETLINK_ROUTE = 0
PERSONALITY_VALUES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)

ALLOWED = (
    # files and directories
    "access", "chdir", "chmod", "chown", "close", "close_range", "copy_file_range", "creat",
    "dup", "dup2", "dup3", "faccessat", "faccessat2", "fadvise64", "fallocate", "fchdir",
    "fchmod", "fchmodat", "fchown", "fchownat", "fcntl", "fdatasync", "fgetxattr",
    "flistxattr", "flock", "fremovexattr", "fsetxattr", "fstat", "fstatfs", "fsync",
    "ftruncate", "futimesat", "getcwd", "getdents", "getdents64", "getxattr",
    "inotify_add_watch", "inotify_init", "inotify_init1", "inotify_rm_watch", "lchown",
    "lgetxattr", "link", "linkat", "listxattr", "llistxattr", "lremovexattr", "lseek",
    "lsetxattr", "lstat", "mkdir", "mkdirat", "mknod", "mknodat", "newfstatat", "open",
    "openat", "openat2", "pread64", "preadv", "preadv2", "pwrite64", "pwritev", "pwritev2",
    "read", "readahead", "readlink", "readlinkat", "readv", "removexattr", "rename",
    "renameat", "renameat2", "rmdir", "sendfile", "setxattr", "splice", "stat", "statfs",
    "statx", "symlink", "symlinkat", "sync", "sync_file_range", "syncfs", "tee", "truncate",
    "umask", "unlink", "unlinkat", "utime", "utimensat", "utimes", "write", "writev",
    "vmsplice",
    # memory
    "brk", "madvise", "membarrier", "memfd_create", "mincore", "mlock", "mlock2",
    "mlockall", "mmap", "mprotect", "mremap", "msync", "munlock", "munlockall", "munmap",
    "pkey_alloc", "pkey_free", "pkey_mprotect", "remap_file_pages",
    # processes, threads, scheduling, limits
    "arch_prctl", "capget", "capset", "execve", "execveat", "exit", "exit_group", "fork",
    "get_robust_list", "getcpu", "getegid", "geteuid", "getgid", "getgroups", "getitimer",
    "getpgid", "getpgrp", "getpid", "getppid", "getpriority", "getrandom", "getresgid",
    "getresuid", "getrlimit", "getrusage", "getsid", "gettid", "getuid", "ioprio_get",
    "ioprio_set", "prctl", "prlimit64", "rseq", "sched_get_priority_max",
    "sched_get_priority_min", "sched_getaffinity", "sched_getattr", "sched_getparam",
    "sched_getscheduler", "sched_rr_get_interval", "sched_setaffinity", "sched_setattr",
    "sched_setparam", "sched_setscheduler", "sched_yield", "set_robust_list",
    "set_tid_address", "setfsgid", "setfsuid", "setgid", "setgroups", "setitimer",
    "setpgid", "setpriority", "setregid", "setresgid", "setresuid", "setreuid",
    "setrlimit", "setsid", "setuid", "sysinfo", "times", "uname", "vfork", "wait4",
    "waitid", "seccomp",
    # signals and waiting
    "alarm", "kill", "nanosleep", "clock_nanosleep", "pause", "pidfd_open",
    "pidfd_send_signal", "restart_syscall", "rt_sigaction", "rt_sigpending",
    "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend",
    "rt_sigtimedwait", "rt_tgsigqueueinfo", "sigaltstack", "signalfd", "signalfd4",
    "tgkill", "tkill",
    # time
    "clock_getres", "clock_gettime", "gettimeofday", "time", "timer_create",
    "timer_delete", "timer_getoverrun", "timer_gettime", "timer_settime",
    "timerfd_create", "timerfd_gettime", "timerfd_settime",
    # synchronisation, polling, IPC inside the container (its IPC namespace is private)
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_pwait", "epoll_pwait2",
    "epoll_wait", "eventfd", "eventfd2", "futex", "futex_waitv", "pipe", "pipe2", "poll",
    "ppoll", "pselect6", "select", "msgctl", "msgget", "msgrcv", "msgsnd", "semctl",
    "semget", "semop", "semtimedop", "shmat", "shmctl", "shmdt", "shmget", "mq_getsetattr",
    "mq_notify", "mq_open", "mq_timedreceive", "mq_timedsend", "mq_unlink",
    "io_cancel", "io_destroy", "io_getevents", "io_pgetevents", "io_setup", "io_submit",
    # sockets (socket itself is checked by family below)
    "accept", "accept4", "bind", "connect", "getpeername", "getsockname", "getsockopt",
    "listen", "recvfrom", "recvmmsg", "recvmsg", "sendmmsg", "sendmsg", "sendto",
    "setsockopt", "shutdown", "socketpair",
    # device control (GPU drivers talk through ioctl on the device nodes they were given)
    "ioctl",
)


def _rule(names: list[str], action: str = "SCMP_ACT_ALLOW", *,
          args: list[dict[str, Any]] | None = None, errno: int | None = None
          ) -> dict[str, Any]:
    rule: dict[str, Any] = {"names": names, "action": action, "args": args or []}
    if errno is not None:
        rule["errnoRet"] = errno
    return rule


def profile(runtime: str = "runc") -> dict[str, Any]:
    """The profile as Docker's seccomp JSON (a dict; `security_opt` wants the text)."""
    gvisor = runtime == "runsc"
    syscalls = [_rule(sorted({*ALLOWED, *(["clone3"] if gvisor else [])}))]
    syscalls.append(_rule(["clone"], args=[
        {"index": 0, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0,
         "op": "SCMP_CMP_MASKED_EQ"}]))
    if not gvisor:
        syscalls.append(_rule(["clone3"], "SCMP_ACT_ERRNO", errno=ENOSYS))
    for family in (AF_UNIX, AF_INET, AF_INET6):
        syscalls.append(_rule(["socket"], args=[
            {"index": 0, "value": family, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]))
    syscalls.append(_rule(["socket"], args=[
        {"index": 0, "value": AF_NETLINK, "valueTwo": 0, "op": "SCMP_CMP_EQ"},
        {"index": 2, "value": NETLINK_ROUTE, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]))
    for value in PERSONALITY_VALUES:
        syscalls.append(_rule(["personality"], args=[
            {"index": 0, "value": value, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]))
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "archMap": [
            {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": []},
            {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": []},
        ],
        "syscalls": syscalls,
    }


PROFILES = {runtime: json.dumps(profile(runtime), separators=(",", ":"))
            for runtime in ("runc", "runsc")}


def security_opt(runtime: str) -> list[str]:
    """The container's security options: no new privileges, and this profile."""
    return ["no-new-privileges:true", f"seccomp={PROFILES[runtime]}"]
