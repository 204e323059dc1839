"""The process that stands between a worker and one run of a CGI program, so that the
program's whole process tree ends with the request.

The worker starts this file with ``python -I -S`` (standard library only, nothing of
Poolhouse imported: it starts in a few milliseconds) for every CGI request::

    cgi_launcher.py --parent WORKER_PID [--cgroup DIR] -- PROGRAM [ARG...]

with the program's environment, working folder and standard streams.  It

- makes itself a child subreaper (``PR_SET_CHILD_SUBREAPER``): every descendant of the
  program that is orphaned — a daemon that double-forks, a child that calls ``setsid`` —
  is re-parented to it instead of to init, so none can leave the tree;
- when ``--cgroup`` names a cgroup v2 folder the worker may write (the activation
  service delegates one per worker), creates ``cgi-<pid>`` below it and starts the
  program there: a child cannot leave it by changing its session or process group;
- runs the program and, when the program exits, or when the worker signals it (SIGTERM:
  the request ended, the client left, ``cgi/@timeout`` passed), or when the worker dies
  (``PR_SET_PDEATHSIG``), kills what remains: the cgroup at once (``cgroup.kill``), then
  every descendant it can still find, walking the tree (``/proc/<pid>/task/*/children``
  where the kernel has it, else the parent pids in ``/proc/*/stat``), reaping each, until
  it has no child left — no zombie stays behind;
- exits as the program did (its exit status, or killed by the same signal), so the
  worker reads the program's outcome from it.

Its own standard input and output are closed once the program runs, so the worker sees
the end of the output when the program and its descendants are gone.  Messages go to
standard error (the worker logs what a CGI run writes there).
"""

import errno
import os
import _signal as signal  # the C module: "signal" imports enum, a third of this start-up
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
WAITED = STOP_SIGNALS + (signal.SIGCHLD,)
PREFIX = "poolhouse cgi launcher: "


def _say(text):
    try:
        os.write(2, (PREFIX + text + "\n").encode("utf-8", "replace"))
    except OSError:
        pass


def _prctl(option, value):
    """prctl(2) through _ctypes' own call (importing the ctypes package costs more than
    the rest of this process's start); ctypes where that is missing."""
    try:
        import _ctypes
        rc = _ctypes.call_function(_ctypes.dlsym(_ctypes.dlopen(None), "prctl"), (option, value, 0, 0, 0))
    except (ImportError, AttributeError, OSError):
        import ctypes
        rc = ctypes.CDLL(None).prctl(option, value, 0, 0, 0)
    if rc != 0:
        raise OSError(errno.EINVAL, "prctl(%d, %d) failed" % (option, value))


def _children_map():
    """{parent pid: [child pids]} of every process we can see in /proc."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/" + name + "/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
            out.setdefault(int(fields[1]), []).append(int(name))
        except (OSError, IndexError, ValueError):
            continue
    return out


def _task_children(pid):
    """Children of ``pid`` from /proc/<pid>/task/*/children; None where the kernel
    lacks these files (CONFIG_PROC_CHILDREN)."""
    kids = []
    try:
        tids = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return []
    for tid in tids:
        try:
            with open("/proc/%d/task/%s/children" % (pid, tid), "rb") as fh:
                kids.extend(int(x) for x in fh.read().split())
        except FileNotFoundError:
            if not os.path.exists("/proc/%d/task/%s" % (pid, tid)):
                continue  # the thread ended
            return None
        except (OSError, ValueError):
            continue
    return kids


def descendants(root):
    """Every process below ``root`` (breadth first)."""
    found = []
    todo = [root]
    table = None
    while todo:
        pid = todo.pop()
        kids = None if table is not None else _task_children(pid)
        if kids is None:
            if table is None:
                table = _children_map()
            kids = table.get(pid, [])
        found.extend(kids)
        todo.extend(kids)
    return found


def kill_cgroup(group):
    """Kill everything in ``group`` (and below): ``cgroup.kill`` where the kernel has it
    (5.14+), else each pid of ``cgroup.procs`` until it is empty."""
    try:
        with open(os.path.join(group, "cgroup.kill"), "w") as fh:
            fh.write("1")
        return
    except FileNotFoundError:
        pass
    except OSError as exc:
        _say("cannot write %s/cgroup.kill: %s" % (group, exc.strerror))
    for _ in range(1000):
        try:
            with open(os.path.join(group, "cgroup.procs")) as fh:
                pids = [int(x) for x in fh.read().split()]
        except (OSError, ValueError):
            return
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def remove_cgroup(group):
    """rmdir once the cgroup is empty (a killed process leaves it as it exits)."""
    for _ in range(200):
        try:
            os.rmdir(group)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                _say("cannot remove %s: %s" % (group, exc.strerror))
                return
        time.sleep(0.005)
    _say("%s still busy: left for the activation service" % group)


class Launcher:
    """Signals are handled synchronously: SIGCHLD and the stop signals stay blocked and
    ``sigwaitinfo`` takes them one at a time, so no handler can interrupt the cleanup."""

    def __init__(self, parent, cgroup_parent, argv):
        self.parent = parent
        self.cgroup_parent = cgroup_parent
        self.argv = argv
        self.me = os.getpid()
        self.child = 0
        self.status = None  # the program's wait status, once reaped
        self.group = None

    def reap(self, flags):
        """One waitpid(-1); ChildProcessError when no child is left."""
        pid, status = os.waitpid(-1, flags)
        if pid and pid == self.child:
            self.status = status
        return pid

    def make_group(self):
        if not self.cgroup_parent:
            return
        group = os.path.join(self.cgroup_parent, "cgi-%d" % self.me)
        try:
            os.mkdir(group)
        except OSError as exc:
            _say("cannot create the cgroup %s (%s): the process tree is contained by the "
                 "subreaper alone" % (group, exc.strerror))
            return
        self.group = group

    def start(self):
        """fork + exec; the child joins the cgroup and unblocks the signals first.  An
        exec failure comes back through a close-on-exec pipe."""
        rd, wr = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            try:
                os.close(rd)
                if self.group is not None:
                    with open(os.path.join(self.group, "cgroup.procs"), "w") as fh:
                        fh.write(str(os.getpid()))
                signal.pthread_sigmask(signal.SIG_SETMASK, set())
                os.execv(self.argv[0], self.argv)
            except OSError as exc:
                try:
                    os.write(wr, str(exc.errno or 0).encode())
                finally:
                    os._exit(127)
            os._exit(127)
        self.child = pid
        os.close(wr)
        return rd

    def run(self):
        """None once the program has run or was stopped (its outcome is ``status``),
        else the launcher's own exit code: 1 (could not set up), 126/127 (could not
        execute)."""
        signal.pthread_sigmask(signal.SIG_BLOCK, WAITED)
        try:
            _prctl(PR_SET_CHILD_SUBREAPER, 1)
            _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        except OSError as exc:
            _say("prctl failed (%s): the program is not started" % exc.strerror)
            return 1
        if self.parent and os.getppid() != self.parent:
            return 1  # the worker is already gone
        self.make_group()
        rd = self.start()
        failed = b""
        try:
            while True:
                piece = os.read(rd, 64)
                if not piece:
                    break
                failed += piece
        finally:
            os.close(rd)
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.close(null)
        if failed:
            code = int(failed)
            _say("cannot execute %s: %s" % (self.argv[0], os.strerror(code)))
            self.finish()
            return 126 if code in (errno.EACCES, errno.ENOEXEC, errno.EPERM) else 127
        while self.status is None:
            if signal.sigwaitinfo(WAITED).si_signo != signal.SIGCHLD:
                break  # the worker asked for the end, or died
            try:
                while self.reap(os.WNOHANG):
                    pass
            except ChildProcessError:
                break
        self.finish()
        return None

    def finish(self):
        """Kill and reap every descendant; then remove the cgroup."""
        try:
            while self.reap(os.WNOHANG):
                pass
            alone = False
        except ChildProcessError:
            # no child left: as the subreaper, no descendant either (an orphan would
            # have become our child) — the common case costs no walk
            alone = True
        if self.group is not None and not alone:
            kill_cgroup(self.group)
        while not alone:
            for pid in descendants(self.me):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            try:
                self.reap(0)
            except ChildProcessError:
                break
        if self.group is not None:
            remove_cgroup(self.group)


def exit_as(status):
    """Leave with the program's outcome: its exit status, or death by its signal."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            import resource
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        except (ImportError, OSError, ValueError):
            pass
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)


def parse(args):
    parent, group = 0, ""
    while args and args[0] != "--":
        if args[0] == "--parent" and len(args) > 1:
            parent = int(args[1])
            args = args[2:]
        elif args[0] == "--cgroup" and len(args) > 1:
            group = args[1]
            args = args[2:]
        else:
            raise SystemExit(PREFIX + "unknown argument " + args[0])
    if len(args) < 2:
        raise SystemExit(PREFIX + "usage: cgi_launcher.py [--parent PID] [--cgroup DIR] -- PROGRAM [ARG...]")
    return parent, group, args[1:]


def main():
    parent, group, argv = parse(sys.argv[1:])
    launcher = Launcher(parent, group, argv)
    code = launcher.run()
    if code is not None:
        os._exit(code)
    if launcher.status is None:  # stopped before the program could be reaped
        os._exit(128 + signal.SIGKILL)
    exit_as(launcher.status)


if __name__ == "__main__":
    main()
