# -*- coding: utf-8 -*-
# Copyright: jiva-py contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Service layer shared by the replica, witness and controller modules: config files plus systemd or daemons.

One jiva process = one "service" named KIND-VOLUME (replica-db, witness-db, controller-db). Its arguments live
in CONFIG_DIR/KIND-VOLUME.env as `JIVA_ARGS=...`; secrets go to separate 0600 files. With systemd
the template unit jiva@.service runs it; without, a supervisor (python -m jiva_engine.supervise)
started with setsid restarts it on a crash and keeps a pidfile in RUN_DIR.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time

SERVICE_COMMON_ARGS = dict(
    config_dir=dict(type="path", default="/etc/jiva"),
    run_dir=dict(type="path", default="/run/jiva"),
    log_dir=dict(type="path", default="/var/log/jiva"),
    venv=dict(type="path", default="/opt/jiva/venv"),
    service_manager=dict(type="str", default="auto", choices=["auto", "systemd", "daemon"]),
    engine_revision=dict(type="str", default=""),
    start_timeout=dict(type="float", default=15.0),
    alive_check=dict(type="float", default=1.0),
    restart=dict(type="bool", default=True),
    applied_online=dict(type="bool", default=False),
)

# Arguments a running process takes online (the controller grows a volume through its API, then
# the env file gets the new size): a change of only these never calls for a restart.
ONLINE_ARGS = ("--size",)

# Arguments naming a file whose content the process reads at start, besides the `--*-file` ones
# (secrets): a changed file calls for a restart like a changed argument.
FILE_ARGS = ("--api-tls-cert", "--api-tls-key")


def render_env(kind, volume, args, revision):
    """Return the env file text for one service: a header and the quoted argument line.

    ValueError for an argument with a line break or NUL (the line would not read back)."""
    for a in args:
        if any(c in str(a) for c in "\n\r\0"):
            raise ValueError("argument %r of the %s of %s has a line break or NUL" % (a, kind, volume))
    line = " ".join(shlex.quote(str(a)) for a in [kind] + list(args))
    lines = [
        "# Managed by Ansible (jiva.storage.%s): volume %s" % (kind, volume),
        "# engine revision: %s" % (revision or "unknown"),
        "JIVA_ARGS=%s" % shlex.quote(line),
        "",
    ]
    return "\n".join(lines)


def parse_env_args(text):
    """The words of the JIVA_ARGS line of an env file's text written by render_env (the
    subcommand first), or None when the line is missing or malformed."""
    for line in (text or "").split("\n"):  # not splitlines(): \x1c-\x1e are no line breaks
        if line.startswith("JIVA_ARGS="):
            try:
                return shlex.split(shlex.split(line[len("JIVA_ARGS="):].strip())[0])
            except (ValueError, IndexError):
                return None
    return None


def env_args(path):
    """The words of the JIVA_ARGS line of the env file `path`, or None (see parse_env_args)."""
    return parse_env_args(read_file(path))


def config_fingerprint(env_text, read):
    """What a process started from this env file runs with, as a sha256 hex string (None when
    there is no env file): the file's other lines (the engine revision), its arguments without
    those applied online (ONLINE_ARGS with their values), and the content of every file named by
    a `--*-file` argument (secrets) or a FILE_ARGS one (the API's certificate and key), read with
    `read(path)` (text or None). Two configs with the
    same fingerprint need no restart to go from one to the other."""
    if env_text is None:
        return None
    words = parse_env_args(env_text)
    other = [line for line in env_text.split("\n") if line.strip() and not line.startswith("JIVA_ARGS=")]
    if words is None:
        words = [line for line in env_text.split("\n") if line.startswith("JIVA_ARGS=")]
    kept, files = [], []
    i = 0
    while i < len(words):
        w = words[i]
        if w in ONLINE_ARGS and i + 1 < len(words):
            i += 2
            continue
        kept.append(w)
        if (w in FILE_ARGS or w.startswith("--") and w.endswith("-file")) and i + 1 < len(words):
            files.append([words[i + 1], read(words[i + 1])])
        i += 1
    doc = json.dumps({"lines": other, "args": kept, "files": files}, sort_keys=True)
    return hashlib.sha256(doc.encode("utf-8")).hexdigest()


def plan_actions(state, running, orphan, started_with, wanted, restart):
    """(service actions, restart_pending) for one service.

    `running`: its supervisor/unit is up; `orphan`: a child without a supervisor is left;
    `started_with`: the fingerprint (config_fingerprint) the running process was started with;
    `wanted`: the fingerprint of the config being written. A running service whose fingerprint
    differs is restarted, or with `restart` false left running and reported pending (the
    rolling play restarts it later, one host at a time)."""
    actions = []
    pending = False
    if state in ("absent", "stopped") and (running or orphan):
        actions.append("stop")
    if state == "started":
        if not running:
            actions.append("start")
        elif started_with != wanted:
            if restart:
                actions.append("restart")
            else:
                pending = True
    return actions, pending


def process_args(pid):
    """The command-line words (bytes) of process `pid` while it lives (not a zombie), else None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            args = f.read().split(b"\0")
    except (IOError, OSError, IndexError):
        return None
    return None if state == "Z" else args


def supervisor_pid(pidfile):
    """The PID in `pidfile` when that process runs and is the supervisor that keeps that file
    (its command line names it), else None: a stale pidfile or a reused PID is not alive."""
    text = read_file(pidfile)
    if not text or not text.strip().isdigit():
        return None
    pid = int(text.strip())
    args = process_args(pid)
    if args is None or not any(pidfile.encode() in a for a in args):
        return None
    return pid


def read_file(path):
    """Return the text of `path`, or None when it does not exist."""
    try:
        with open(path, "r") as f:
            return f.read()
    except (IOError, OSError):
        return None


def write_atomic(path, content, mode):
    """Write `content` to `path` atomically (temp file, fsync, rename) with `mode`."""
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except Exception:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def file_mode(path):
    """Return the permission bits of `path`, or None."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        return None


class Service(object):
    """One jiva service (KIND-VOLUME) on this host, managed by systemd or as a supervised daemon."""

    def __init__(self, module, kind, volume):
        p = module.params
        self.module = module
        self.kind = kind
        self.volume = volume
        self.name = "%s-%s" % (kind, volume)
        self.config_dir = p["config_dir"]
        self.run_dir = p["run_dir"]
        self.log_dir = p["log_dir"]
        self.venv = p["venv"]
        self.env_path = os.path.join(self.config_dir, self.name + ".env")
        self.pidfile = os.path.join(self.run_dir, self.name + ".pid")
        self.logfile = os.path.join(self.log_dir, self.name + ".log")
        manager = p["service_manager"]
        if manager == "auto":
            manager = "systemd" if os.path.isdir("/run/systemd/system") else "daemon"
        self.manager = manager
        self.unit = "jiva@%s.service" % self.name
        self.stamp = os.path.join(self.run_dir, self.name + ".started")

    # ---- what the running process was started with ------------------------------------------
    def fingerprint_on_disk(self):
        """config_fingerprint of the env and secret files as they are on disk now."""
        return config_fingerprint(read_file(self.env_path), read_file)

    def started_with(self):
        """The fingerprint the running process was started with: the one recorded at its start
        (RUN_DIR/NAME.started), else the files on disk (it was started before fingerprints were
        kept, or RUN_DIR was wiped under a running unit: it read them then)."""
        text = read_file(self.stamp)
        if text and text.strip():
            return text.strip()
        return self.fingerprint_on_disk()

    def record_started(self):
        """Record the fingerprint of the files the process was just started from."""
        fp = self.fingerprint_on_disk()
        if fp is None:
            return
        if not os.path.isdir(self.run_dir):
            os.makedirs(self.run_dir, 0o755)
        write_atomic(self.stamp, fp + "\n", 0o644)

    def forget_started(self):
        """Drop the record (the process is stopped)."""
        if os.path.exists(self.stamp):
            os.unlink(self.stamp)

    # ---- files -----------------------------------------------------------------------------
    def secret_path(self, what):
        """Path of a secret file of this service, e.g. controller-db.chap."""
        return os.path.join(self.config_dir, "%s.%s" % (self.name, what))

    def plan_files(self, files):
        """Compare wanted files {path: (content, mode, secret)} with disk; return (changed paths, diff)."""
        changed = []
        before, after = [], []
        for path, (content, mode, secret) in sorted(files.items()):
            current = read_file(path)
            if content is None:
                if current is not None:
                    changed.append(path)
                    before.append(self._show(path, current, secret))
                continue
            if current != content or file_mode(path) != mode:
                changed.append(path)
                before.append(self._show(path, current, secret))
                after.append(self._show(path, content, secret))
        diff = {
            "before_header": self.name + " (config)",
            "after_header": self.name + " (config)",
            "before": "".join(x for x in before if x),
            "after": "".join(x for x in after if x),
        }
        return changed, diff

    @staticmethod
    def _show(path, content, secret):
        if content is None:
            return ""
        if secret:
            return "# %s: (secret, %d bytes, not shown)\n" % (path, len(content))
        return "# %s\n%s" % (path, content)

    def apply_files(self, files, changed):
        """Write (or delete, for content None) the changed files."""
        for path in changed:
            content, mode, _secret = files[path]
            if content is None:
                if os.path.exists(path):
                    os.unlink(path)
            else:
                if not os.path.isdir(os.path.dirname(path)):
                    os.makedirs(os.path.dirname(path), 0o755)
                write_atomic(path, content, mode)

    # ---- process state -----------------------------------------------------------------------
    def _pid(self):
        return supervisor_pid(self.pidfile)

    def _orphan_pid(self):
        """PID of a jiva child left running by a supervisor that died (kill -9), or None."""
        text = read_file(self.pidfile + ".child")
        if not text or not text.strip().isdigit():
            return None
        pid = int(text.strip())
        args = process_args(pid)
        if args is None or self.kind.encode() not in args or self.volume.encode() not in args:
            return None
        return pid

    def _stop_orphan(self):
        """Stop a child whose supervisor is gone, so a new one can bind its ports."""
        pid = self._orphan_pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.time() + 10
        while time.time() < deadline and self._orphan_pid() is not None:
            time.sleep(0.05)
        if self._orphan_pid() is not None:
            os.kill(pid, signal.SIGKILL)

    def running(self):
        """True when the service (its supervisor or systemd unit) is up."""
        if self.manager == "systemd":
            rc, _out, _err = self.module.run_command(
                ["systemctl", "is-active", "--quiet", self.unit]
            )
            return rc == 0
        return self._pid() is not None

    def start(self):
        """Start the service; with daemons, wait until the supervisor has written its pidfile."""
        if self.manager == "systemd":
            self._systemctl("enable", "--now")
            self.record_started()
            return
        for d in (self.run_dir, self.log_dir):
            if not os.path.isdir(d):
                os.makedirs(d, 0o755)
        self._stop_orphan()
        cmd = [
            os.path.join(self.venv, "bin", "python"),
            "-m",
            "jiva_engine.supervise",
            "--name",
            self.name,
            "--env-file",
            self.env_path,
            "--pidfile",
            self.pidfile,
            "--log",
            self.logfile,
            "--",
            os.path.join(self.venv, "bin", "jiva"),
        ]
        devnull = open(os.devnull, "r+b")
        try:
            subprocess.Popen(
                cmd,
                stdin=devnull,
                stdout=devnull,
                stderr=devnull,
                close_fds=True,
                start_new_session=True,
                cwd="/",
            )
        finally:
            devnull.close()
        deadline = time.time() + self.module.params["start_timeout"]
        while time.time() < deadline:
            if self._pid() is not None:
                self.record_started()
                return
            time.sleep(0.05)
        self.module.fail_json(
            msg="%s: the supervisor did not start (see %s)" % (self.name, self.logfile)
        )

    def stop(self):
        """Stop the service: SIGTERM the supervisor (it stops its child), SIGKILL after a wait."""
        self.forget_started()
        if self.manager == "systemd":
            self._systemctl("disable", "--now")
            return
        pid = self._pid()
        if pid is None:
            self._stop_orphan()
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.time() + 15
        while time.time() < deadline and self._pid() is not None:
            time.sleep(0.05)
        if self._pid() is not None:
            os.kill(pid, signal.SIGKILL)
        if os.path.exists(self.pidfile):
            os.unlink(self.pidfile)
        self._stop_orphan()

    def restart(self):
        """Stop then start (the process re-reads its config)."""
        self.stop()
        self.start()

    def _systemctl(self, *args):
        rc, out, err = self.module.run_command(["systemctl"] + list(args) + [self.unit])
        if rc != 0:
            self.module.fail_json(
                msg="systemctl %s %s failed: %s" % (" ".join(args), self.unit, (err or out).strip())
            )

    def check_alive(self, seconds):
        """After a start, make sure the process stays up for `seconds` (it did not crash on its config)."""
        if self.manager == "systemd" or seconds <= 0:
            return
        deadline = time.time() + seconds
        while time.time() < deadline:
            time.sleep(0.1)
        if self._pid() is None or read_file(self.pidfile + ".crashes") is not None:
            tail = (read_file(self.logfile) or "")[-2000:]
            self.module.fail_json(
                msg="%s is not running after start; log tail:\n%s" % (self.name, tail)
            )


def ensure(module, kind, volume, args, files_extra, data_cleanup=None, dirs=None):
    """Bring one service to module.params['state']; exit the module with changed/diff/result.

    `args` is the jiva argument list, `files_extra` {path: (content|None, mode, secret)} the secret
    files (content None = must not exist). `data_cleanup` is a callable run (not in check mode)
    when state=absent and the caller asked to delete data; it returns True when it removed something.
    `dirs` are directories (mode 0700) that must exist unless state=absent.
    """
    state = module.params["state"]
    svc = Service(module, kind, volume)
    revision = module.params["engine_revision"]
    files = dict(files_extra)
    if state == "absent":
        files = dict((path, (None, 0o600, spec[2])) for path, spec in files.items())
        files[svc.env_path] = (None, 0o600, False)
    else:
        try:
            files[svc.env_path] = (render_env(kind, volume, args, revision), 0o600, False)
        except ValueError as exc:
            module.fail_json(msg=str(exc))
    changed_files, diff = svc.plan_files(files)
    new_dirs = [d for d in (dirs or []) if state != "absent" and not os.path.isdir(d)]
    running = svc.running()
    orphan = svc.manager == "daemon" and svc._orphan_pid() is not None
    started_with = wanted = None
    if state == "started" and running:
        started_with = svc.started_with()
        wanted = config_fingerprint(
            files[svc.env_path][0], lambda path: files[path][0] if path in files else read_file(path)
        )
    online = module.params["applied_online"] and running and state in ("present", "started")
    if online:
        started_with = wanted  # the running process already has it (changed through its API)
    actions, restart_pending = plan_actions(
        state, running, orphan, started_with, wanted, module.params["restart"]
    )
    data_removed = False
    if not module.check_mode:
        if running and not actions and not os.path.exists(svc.stamp) and started_with is not None:
            # started before fingerprints were kept: record what it runs before the files change
            if not os.path.isdir(svc.run_dir):
                os.makedirs(svc.run_dir, 0o755)
            write_atomic(svc.stamp, started_with + "\n", 0o644)
        if "stop" in actions:
            svc.stop()
        for d in new_dirs:
            os.makedirs(d, 0o700)
        if state == "absent" and data_cleanup is not None:
            data_removed = bool(data_cleanup())
        svc.apply_files(files, changed_files)
        if online:
            svc.record_started()
        if "start" in actions:
            svc.start()
        if "restart" in actions:
            svc.restart()
        if actions and state == "started":
            svc.check_alive(module.params["alive_check"])
    elif state == "absent" and data_cleanup is not None:
        data_removed = bool(data_cleanup(check=True))
    changed = bool(changed_files or actions or data_removed or new_dirs)
    result = dict(
        changed=changed,
        name=svc.name,
        state=state,
        service_manager=svc.manager,
        config_file=svc.env_path,
        pidfile=svc.pidfile if svc.manager == "daemon" else None,
        log_file=svc.logfile if svc.manager == "daemon" else None,
        actions=actions,
        restart_pending=restart_pending,
        changed_files=changed_files,
        created_dirs=new_dirs,
        data_removed=data_removed,
        args=[kind] + list(args),
    )
    if changed_files:
        result["diff"] = diff
    module.exit_json(**result)


# ---- voters: the services that keep something of a volume on this host (replica, witness) ------
VOTER_ARGS = dict(
    name=dict(type="str", required=True),
    state=dict(type="str", default="started", choices=["present", "started", "stopped", "absent"]),
    listen=dict(type="str"),
    data_dir=dict(type="path"),
    secret=dict(type="str", no_log=True),
    previous_secret=dict(type="str", no_log=True),
    delete_data=dict(type="bool", default=False),
    metrics=dict(type="str"),
)


def voter_module_kwargs(extra_spec=None, required=()):
    """AnsibleModule keyword arguments of a voter module (jiva.storage.replica, jiva.storage.witness):
    VOTER_ARGS + `extra_spec` + SERVICE_COMMON_ARGS; `listen`, `data_dir` and `required` are needed
    unless state=absent (documented in the doc fragment jiva.storage.voter)."""
    spec = dict(VOTER_ARGS)
    spec.update(extra_spec or {})
    spec.update(SERVICE_COMMON_ARGS)
    needed = ("listen", "data_dir") + tuple(required)
    return dict(
        argument_spec=spec,
        supports_check_mode=True,
        required_if=[("state", s, needed) for s in ("present", "started", "stopped")]
        + [("delete_data", True, ("data_dir",))],
    )


def secret_files(module, svc, specs):
    """Arguments and wanted files of a service's secrets: `specs` lists (what, flag, value); a set
    value becomes a 0600 file CONFIG_DIR/KIND-NAME.WHAT passed with `flag`, an empty one (or
    state=absent) a file that must not exist. Returns (args, files)."""
    args, files = [], {}
    for what, flag, value in specs:
        path = svc.secret_path(what)
        if value and module.params["state"] != "absent":
            args += [flag, path]
            files[path] = (value, 0o600, True)
        else:
            files[path] = (None, 0o600, True)
    return args, files


def check_previous(module, pairs):
    """Fail when a `previous_*` secret (accepted during a rotation) is set without its current
    one: `pairs` lists (current option, previous option)."""
    p = module.params
    for current, previous in pairs:
        if p[previous] and not p[current] and p["state"] != "absent":
            module.fail_json(
                msg="%s: %s is set but %s is not (the previous one is only accepted next to a"
                " current one)" % (p["name"], previous, current)
            )


def ensure_voter(module, kind, extra_args=()):
    """Bring a voter service (`jiva KIND --volume NAME --listen L --dir D EXTRA [--metrics M] [--secret-file F]
    [--previous-secret-file F2]`) to its state and exit the module. The data folder is created
    (0700) unless state=absent, and deleted only with state=absent and delete_data=true."""
    p = module.params
    name = p["name"]
    svc = Service(module, kind, name)
    check_previous(module, [("secret", "previous_secret")])
    args = []
    if p["state"] != "absent":
        args = ["--volume", name, "--listen", p["listen"], "--dir", p["data_dir"]] + list(extra_args)
        if p["metrics"]:
            args += ["--metrics", p["metrics"]]
    secret_args, files = secret_files(
        module,
        svc,
        [
            ("secret", "--secret-file", p["secret"]),
            ("previous-secret", "--previous-secret-file", p["previous_secret"]),
        ],
    )
    args += secret_args

    def cleanup(check=False):
        data_dir = p["data_dir"]
        if not p["delete_data"] or not data_dir or not os.path.isdir(data_dir):
            return False
        if data_dir.rstrip("/") in ("", "/"):
            module.fail_json(msg="refusing to delete data_dir %r" % data_dir)
        if not check:
            shutil.rmtree(data_dir)
        return True

    ensure(
        module,
        kind,
        name,
        args,
        files,
        data_cleanup=cleanup,
        dirs=[p["data_dir"]] if p["data_dir"] else [],
    )
