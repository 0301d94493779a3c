"""migrun_spawner: JupyterHub's DockerSpawner with a MIG slice per user server, through migrun.

It owns the spawn form (the profiles the box offers, with how many of each are free now, plus "no GPU"),
the user's choice (checked against what the box offers), the uid a server's slice is charged to, and
handing the slice to the server's container. Before docker creates the container it asks `migrun alloc
--profile P --for-uid UID --holder-pid <hub pid> --handover --json`: migrun charges the lease to the user
(so `max_leases_per_user` applies, and its refusal is the spawn's failure) and records a one-time token.
The container carries the lease and the token in its env (`MIGRUN_LEASE`, `MIGRUN_HANDOVER`, with
`MIGRUN_PROFILE`) and runs under migrun's docker runtime (`runtime: migrun`); the runtime shim takes the
lease over for that container, and its poststop hook frees it when the container stops, is culled or dies.
If the container never starts, the spawner releases the lease, only while no container has taken it
(`migrun release N --if-handover-pending`); if the hub dies first, `migrun gc` frees it
(its holder, the hub's process, is gone). The hub must run as root: only plain root may charge a lease to
someone else.

In jupyterhub_config.py (docs/jupyter.md):

    import sys
    sys.path.insert(0, "/usr/share/migrun/jupyterhub")   # where this file is installed
    c.JupyterHub.spawner_class = "migrun_spawner.MigrunSpawner"
    c.DockerSpawner.image = "my-cuda-notebook:latest"      # any image with jupyterhub-singleuser
"""

import asyncio
import html
import inspect
import json
import os
import pwd
import re

from dockerspawner import DockerSpawner
from traitlets import Any, Bool, Dict, Float, List, Unicode, default

# What a profile name may look like before migrun parses it (migrun is the judge; this only keeps
# form input that is not a profile name out of the container's env and the log).
_PROFILE_RE = re.compile(r"^[0-9a-z][0-9a-z.+-]{0,31}$")
NO_GPU = "none"


class MigrunError(Exception):
    """A spawn migrun refused or could not serve; str() is migrun's one-line reason, which JupyterHub
    shows in the spawn's progress ("Spawn failed: <reason>")."""

    def __init__(self, message):
        super().__init__(message)
        self.jupyterhub_message = message


def migrun_line(text):
    """migrun's one-line reason out of what docker or migrun printed, e.g. docker's
    `... OCI runtime create failed: migrun: no room for 1g.10gb on GPU 0 (...): ...: unknown`.
    Falls back to the last non-empty line."""
    lines = [l.strip() for l in str(text).splitlines() if l.strip()]
    for line in lines:
        i = line.find("migrun: ")
        if i >= 0:
            reason = line[i:]
            # docker appends the runtime's status (": unknown") to the runtime's message
            for tail in (": unknown", ": exit status"):
                j = reason.rfind(tail)
                if j > 0:
                    reason = reason[:j]
            return reason
    return lines[-1] if lines else "migrun failed without a message"


class MigrunSpawner(DockerSpawner):
    """DockerSpawner whose servers run on the MIG slice the user picks in the spawn form."""

    migrun = Unicode(
        "migrun", config=True, help="The migrun binary the hub asks for the profiles and leases."
    )
    migrun_env = Dict(
        config=True,
        help="Extra environment for the hub's migrun commands (e.g. MIGRUN_CONFIG); the daemon's runtime "
        "entry must see the same state dir and config.",
    )
    migrun_runtime = Unicode(
        "migrun",
        config=True,
        help="The name migrun's runtime has in dockerd's daemon.json (`runtimes`). Every server runs "
        "under it, so a server without a slice cannot reach a GPU around migrun either.",
    )
    allowed_profiles = List(
        Unicode(),
        config=True,
        help="Profiles the form offers (short names, e.g. 3g.40gb); empty: every profile the GPUs have.",
    )
    offer_no_gpu = Bool(True, config=True, help="Offer 'no GPU' in the form.")
    migrun_timeout = Float(30.0, config=True, help="Seconds a migrun command may take.")
    user_uids = Dict(
        config=True,
        help="Hub user name -> uid that user's slices are charged to (migrun's max_leases_per_user, "
        "`migrun usage`), for hub users without a system account. Users not listed are looked up in "
        "the system's user database (pwd).",
    )
    uid_for_user = Any(
        None,
        config=True,
        allow_none=True,
        help="A callable (user name -> uid, or None) asked before user_uids and pwd, e.g. to map an "
        "OAuth identity to the uid its quota belongs to.",
    )

    @default("remove")
    def _default_remove(self):
        # A fresh container per spawn: a stopped container restarted would keep the request (env) of
        # the spawn that created it, whatever profile the user picks now.
        return True

    @default("options_form")
    def _default_options_form(self):
        return self._render_form

    # ---- migrun ------------------------------------------------------------------------------

    def charged_uid(self):
        """The uid this user's slice is charged to: uid_for_user, then user_uids, then the system's
        user database. A user with none cannot get a slice (never charged to root by default)."""
        name = self.user.name
        uid = None
        if self.uid_for_user is not None:
            uid = self.uid_for_user(name)
        if uid is None:
            uid = self.user_uids.get(name)
        if uid is None:
            try:
                uid = pwd.getpwnam(name).pw_uid
            except KeyError:
                raise MigrunError(
                    f"hub user {name} has no uid to charge a GPU slice to: no system account, and "
                    "not in MigrunSpawner.user_uids or uid_for_user; ask the hub's admin"
                )
        if isinstance(uid, bool) or not isinstance(uid, int) or not 0 <= uid < 2**32:
            raise MigrunError(f"the uid configured for hub user {name} is not a uid: {uid!r}")
        return uid

    async def _migrun_json(self, *args):
        env = dict(os.environ)
        env.update(self.migrun_env)
        proc = await asyncio.create_subprocess_exec(
            self.migrun,
            *args,
            "--json",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.migrun_timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise MigrunError(
                f"migrun {' '.join(args)} took longer than {self.migrun_timeout:g} s; "
                "see `migrun status` on the hub's host"
            )
        if proc.returncode != 0:
            raise MigrunError(migrun_line(err.decode(errors="replace")))
        try:
            return json.loads(out)
        except ValueError as e:
            raise MigrunError(f"migrun {' '.join(args)} --json printed no JSON ({e})")

    async def free_profiles(self):
        """[(short_name, free, total, memory_mib)] over every MIG-enabled GPU, in migrun's order,
        limited to allowed_profiles when set: what `migrun profiles --json` reports now."""
        doc = await self._migrun_json("profiles")
        seen = {}
        for gpu in doc.get("gpus", []):
            if not (gpu.get("mig_mode") or {}).get("current"):
                continue
            for p in gpu.get("profiles", []):
                name = p.get("short_name")
                if not isinstance(name, str):
                    continue
                if self.allowed_profiles and name not in self.allowed_profiles:
                    continue
                free, total = int(p.get("instances_free", 0)), int(p.get("instances_total", 0))
                if name in seen:
                    _, f, t, m = seen[name]
                    seen[name] = (name, f + free, t + total, m)
                else:
                    seen[name] = (name, free, total, int(p.get("memory_mib", 0)))
        return list(seen.values())

    async def lease_of(self, container_id):
        """The lease migrun recorded for this container (its holder names the container), or None."""
        doc = await self._migrun_json("status")
        for lease in doc.get("leases", []):
            holder = lease.get("holder") or {}
            if holder.get("kind") == "container" and holder.get("id") == container_id:
                return lease
        return None

    # ---- the form --------------------------------------------------------------------------

    async def _render_form(self, spawner):
        try:
            profiles = await self.free_profiles()
        except MigrunError as e:
            return (
                '<p class="text-danger">GPU slices are unavailable now: '
                f"{html.escape(str(e))}</p>" + self._no_gpu_only()
            )
        options = []
        if self.offer_no_gpu:
            options.append(f'<option value="{NO_GPU}">no GPU</option>')
        for name, free, total, mem in profiles:
            n = html.escape(name)
            label = f"{n} ({mem} MiB): {free} of {total} free"
            disabled = "" if free > 0 else " disabled"
            options.append(
                f'<option value="{n}" data-free="{free}"{disabled}>{label}</option>'
            )
        return (
            '<label for="migrun-profile">GPU slice</label>\n'
            '<select name="profile" id="migrun-profile" class="form-control">\n'
            + "\n".join(options)
            + "\n</select>\n"
            '<p class="help-block">Free counts are as of this page\'s loading; the slice is yours '
            "until your server stops.</p>"
        )

    def _no_gpu_only(self):
        return f'<input type="hidden" name="profile" value="{NO_GPU}">'

    def options_from_form(self, formdata):
        value = formdata.get("profile", [NO_GPU])
        return {"profile": value[0] if value else NO_GPU}

    async def _chosen_profile(self):
        """The user's choice (form or REST body), checked against what the box offers now."""
        choice = self.user_options.get("profile", NO_GPU)
        if choice in (None, "", NO_GPU):
            if not self.offer_no_gpu:
                raise MigrunError("choose a GPU slice: this hub offers no servers without one")
            return None
        if not isinstance(choice, str) or not _PROFILE_RE.match(choice):
            raise MigrunError(
                f"profile {str(choice)[:40]!r} is not a profile name; pick one from the spawn form"
            )
        offered = [p[0] for p in await self.free_profiles()]
        if choice not in offered:
            raise MigrunError(
                f"profile {choice} is not offered on this hub (offered: {', '.join(offered) or 'none'}, "
                f"or {NO_GPU}); pick one from the spawn form"
            )
        return choice

    # ---- spawning --------------------------------------------------------------------------

    def get_env(self):
        env = super().get_env()
        # Never let the hub's own environment or user options smuggle another request in.
        for k in (
            "MIGRUN_PROFILE",
            "MIGRUN_GPU",
            "MIGRUN_LEASE",
            "MIGRUN_HANDOVER",
            "NVIDIA_VISIBLE_DEVICES",
        ):
            env.pop(k, None)
        lease = getattr(self, "_migrun_lease", None)
        if lease:
            # The request, the lease and its one-time token, as `migrun alloc --handover` names them;
            # the runtime shim takes them out of the config before the server starts.
            env.update(lease["handover"]["env"])
        return env

    async def _allocate(self, profile):
        """`migrun alloc --handover` for this user: the lease, held by the hub's process until the
        container takes it. A refusal (no room, over the user's limit) is migrun's one-line reason."""
        return await self._migrun_json(
            "alloc",
            "--profile",
            profile,
            "--for-uid",
            str(self.charged_uid()),
            "--holder-pid",
            str(os.getpid()),
            "--handover",
        )

    async def _release_unstarted(self, lease):
        """Give back a lease no container took. Only migrun can tell whether one did (the runtime
        shim may have taken it over before docker failed), so it is asked to release the lease only
        while the hub's process still holds it, decided under its lock from its own records
        (`--if-handover-pending`); a lease a container holds is left to that container's poststop,
        and one its poststop already freed is answered with "no lease"."""
        try:
            doc = await self._migrun_json("release", str(lease["lease"]), "--if-handover-pending")
        except MigrunError as e:
            if "no lease" not in str(e):
                self.log.warning("migrun: could not release lease %s: %s", lease["lease"], e)
            return
        outcome = doc.get("outcome") or {}
        if outcome.get("result") == "not-released":
            self.log.info("migrun: %s", outcome.get("note"))

    async def create_object(self):
        host_config = self._eval_if_callable(self.extra_host_config)
        if inspect.isawaitable(host_config):
            host_config = await host_config
        self.extra_host_config = {**(host_config or {}), "runtime": self.migrun_runtime}
        return await super().create_object()

    def _event(self, progress, message):
        """A progress message for the hub's spawn page (shown while the server starts)."""
        if not hasattr(self, "_migrun_events"):
            self._migrun_events = []
        self._migrun_events.append({"progress": progress, "message": message})

    async def progress(self):
        # JupyterHub reads this until the spawn ends (ready or failed), then closes it.
        sent = 0
        while True:
            events = getattr(self, "_migrun_events", [])
            while sent < len(events):
                yield events[sent]
                sent += 1
            await asyncio.sleep(0.2)

    async def start(self):
        self._migrun_events = []
        self._migrun_profile = await self._chosen_profile()
        what = f"a {self._migrun_profile} slice" if self._migrun_profile else "no GPU"
        self.log.info("migrun: starting %s's server with %s", self.user.name, what)
        self._event(10, f"Starting a server with {what}")
        self._migrun_lease = None
        if self._migrun_profile:
            self._migrun_lease = await self._allocate(self._migrun_profile)
        try:
            result = await super().start()
        except BaseException as e:
            # Also a cancelled start: the hub's process outlives it, so gc would not free the lease.
            await self._remove_failed()
            if self._migrun_lease:
                await self._release_unstarted(self._migrun_lease)
            if isinstance(e, MigrunError) or not isinstance(e, Exception):
                raise
            raise MigrunError(migrun_line(getattr(e, "explanation", None) or e)) from e
        finally:
            # The token is good once and no use after the start; keep it out of the spawner's state.
            handed, self._migrun_lease = self._migrun_lease, None
        if handed:
            lease = await self.lease_of(self.container_id)
            if lease is None or lease.get("id") != handed["lease"]:
                # The shim did not take the lease for this container: never serve it without its slice.
                await self.stop(now=True)
                await self._release_unstarted(handed)
                raise MigrunError(
                    f"migrun recorded no lease for container {self.container_id[:12]}; "
                    "check the `migrun` runtime entry in daemon.json and `migrun status`"
                )
            where = (
                f"{lease.get('mig_uuid')} ({lease.get('profile')}, lease {lease.get('id')}, "
                f"GPU {lease.get('gpu_index')})"
            )
            self.log.info("migrun: %s's server runs on %s", self.user.name, where)
            self._event(50, f"On slice {where}; waiting for the notebook server")
        return result

    async def _remove_failed(self):
        """docker created the container but could not start it (migrun refused it): remove it, so the
        next spawn starts clean. The shim left no lease (it releases one whose create failed)."""
        if not getattr(self, "object_id", ""):
            return
        try:
            await self.remove_object()
        except Exception as e:  # the spawn error matters more than a failed cleanup
            self.log.warning("migrun: could not remove the failed container %s: %s", self.object_id[:12], e)
        self.object_id = ""
