"""Deploy, destroy, inspect and list labs: the plan (lab/plan.py) carried out step by step.

Each step either completes or is undone before the error is raised (a network, a node, a link
each unwind themselves; a node whose ``exec`` failed is marked so the next deploy re-makes it),
and the record (lab/records.py) is saved after every step, so it always lists what exists. The
whole deploy or destroy holds the labs lock.

Each wave of the plan is done in one go (issue 10 item 5): every bridge in one batch of
rtnetlink requests after one dump (drivers/rtbatch.py); every node through one
``runtime.batch.start_nodes`` (one supervisor, one hosts refresh, record saved once); every link
through one ``links.make_links`` (both veth ends born in place, all pairs in one batch of
requests, the ends inside each node addressed by ioctls from inside it). A failed link leaves
nothing of itself and is reported after the good ones are recorded. Destroy removes all nodes
through one ``batch.stop_many``: the links with an end in a node die with its namespace, in the
kernel's batched netns cleanup, and are only struck from the record; the host-side rest (bridge
ports, bridge-to-bridge links, bridges) is checked against one dump, marked doomed in one batch
and deleted as one group. What remains is the kernel's: each bridge's deletion waits for an RCU
barrier (br_multicast_dev_del, ~17 ms a bridge on this machine, under the RTNL lock, so serial).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from typing import Any

from client.engine import DaemonUnavailable, PluginError
from drivers.errors import KernelError
from lab import links, plan, preflight
from lab.plan import CREATE, EXEC, REMOVE, Action, Item
from lab.records import LabStore, Record
from lab.spec import Lab
from runtime import batch, process
from runtime.containers import ContainerError, ContainerService

Progress = Callable[[int, int, str], None]
DIRTY = ""                                     # a recorded digest no item has: re-made next time


class LabError(Exception):
    """A user-facing failure: the message is the one line the CLI prints."""


def _quiet(_done: int, _total: int, _text: str) -> None:
    return None


class LabService:
    def __init__(self, svc: ContainerService) -> None:
        self.svc = svc
        self.store = LabStore(svc.state_dir)

    # -- plan and deploy ------------------------------------------------------------------------

    def plan(self, lab: Lab) -> list[Action]:
        with self.store.locked():
            record = self.store.load(lab.name)
            if record is not None:
                self._refresh(record)
            return plan.plan(plan.items(lab), record)

    def deploy(self, lab: Lab, progress: Progress = _quiet) -> list[Action]:
        with self.store.locked():
            record = self.store.load(lab.name) or {"name": lab.name, "items": {}}
            self._refresh(record)
            wanted = plan.items(lab)
            actions = plan.plan(wanted, record)
            refused = preflight.problem(actions)
            if refused is not None:
                raise LabError(refused)                     # before the first step and the record
            record["file"] = os.path.abspath(lab.path)
            for key, item in wanted.items():                # labels and such: no step needed
                if key in record["items"]:
                    record["items"][key]["extra"] = item.extra
            self._save(record)
            total, done = len(actions), 0
            index = 0
            while index < len(actions):
                action = actions[index]
                if action.verb == CREATE and action.kind in ("node", "link", "bridge"):
                    group = []
                    while index < len(actions) and actions[index].verb == CREATE and \
                            actions[index].kind == action.kind:
                        group.append(actions[index])
                        index += 1
                    if action.kind == "node":
                        done = self._start_nodes(record, group, done, total, progress)
                    elif action.kind == "bridge":
                        done = self._create_bridges(record, group, done, total, progress)
                    else:
                        done = self._create_links(record, group, done, total, progress)
                    continue
                progress(done, total, action.describe())
                self._step(record, action)
                done += 1
                index += 1
            progress(done, total, "done")
            return actions

    def _save(self, record: Record) -> None:
        record["updated"] = time.time()
        self.store.save(record)

    def _refresh(self, record: Record) -> None:
        """Mark what vanished behind the lab's back (a node stopped or removed, a network removed)."""
        known = set(self.svc.store.ids())                   # one listing, not one per node
        for entry in record.get("items", {}).values():
            made = entry.get("made") or {}
            if entry.get("kind") == "node" and not self._running(str(made.get("id", "")), known):
                entry["digest"] = DIRTY
            elif entry.get("kind") == "network":
                try:
                    self.svc.engine.inspect_network(str(made.get("id", "")))
                except PluginError:
                    entry["digest"] = DIRTY
                    made["created"] = False                 # nothing left to remove

    def _running(self, cid: str, known: set[str] | None = None) -> bool:
        if not cid or (cid not in known if known is not None else self.svc.store.find(cid) is None):
            return False
        return bool(self.svc.inspect(cid)["State"]["status"] == "running")

    def _entry(self, item: Item, made: dict[str, Any]) -> dict[str, Any]:
        return {"kind": item.kind, "name": item.name, "digest": item.digest, "spec": item.spec,
                "deps": item.deps, "extra": item.extra, "made": made}

    def _step(self, record: Record, action: Action) -> None:
        try:
            if action.verb == REMOVE:
                self._remove(record, action.kind, action.name)
            elif action.verb == EXEC:
                self._exec(record, action)
            elif action.kind == "network":
                self._create_network(record, action)
            elif action.kind == "bridge":
                self._create_bridge(record, action)
            elif action.kind == "link":
                self._create_link(record, action)
        except (PluginError, DaemonUnavailable, ContainerError, KernelError, OSError) as exc:
            raise LabError(f"{action.describe()}: {exc}") from None

    def _create_network(self, record: Record, action: Action) -> None:
        assert action.item is not None
        spec = action.item.spec
        engine = self.svc.engine
        try:
            found: dict[str, Any] = engine.inspect_network(spec["name"])
        except PluginError:
            found = {}
        if found.get("Name") == spec["name"]:
            if not spec["mgmt"]:
                raise LabError(f"network {spec['name']} exists and is not this lab's")
            made = {"id": found["Id"], "created": False}            # a shared management network
        else:
            nid = engine.create_network(spec["name"], driver=spec["driver"], subnets=spec["subnets"],
                                        gateways=spec["gateways"], internal=spec["internal"],
                                        ipv6=any(":" in s for s in spec["subnets"]), options=spec["options"])
            made = {"id": nid, "created": True}
        record["items"][action.item.key] = self._entry(action.item, made)
        self._save(record)

    def _create_bridge(self, record: Record, action: Action) -> None:
        assert action.item is not None
        created = links.make_bridge(record["name"], action.name)
        record["items"][action.item.key] = self._entry(action.item, {"created": created})
        self._save(record)

    def _create_bridges(self, record: Record, group: list[Action], done: int, total: int,
                        progress: Progress) -> int:
        """Every bridge of the wave from one kernel handle; each recorded as made, then the first
        failure raised."""
        progress(done, total, f"create {len(group)} bridge(s)")
        failure: LabError | None = None
        for action, made in zip(group, links.make_bridges(record["name"], [a.name for a in group]), strict=True):
            assert action.item is not None
            if isinstance(made, BaseException):
                failure = failure or LabError(f"{action.describe()}: {made}")
                continue
            record["items"][action.item.key] = self._entry(action.item, {"created": made})
            done += 1
        self._save(record)
        if failure is not None:
            raise failure
        return done

    def _start_nodes(self, record: Record, group: list[Action], done: int, total: int,
                     progress: Progress) -> int:
        starts, by_name = [], {}
        for action in group:
            assert action.item is not None
            spec = action.item.spec
            rootfs = self._unpack(record["name"], spec) if spec.get("rootfs_tar") else spec["rootfs"]
            starts.append(batch.NodeStart(name=spec["container"], command=spec["cmd"], hostname=spec["hostname"],
                                          networks=spec["networks"], rootfs=rootfs,
                                          env=[f"{k}={v}" for k, v in spec["env"].items()]))
            by_name[spec["container"]] = action.item
        count = [done]
        progress(done, total, f"start node {group[0].name}")

        def started(node: batch.Started) -> None:
            item = by_name[node.name]
            record["items"][item.key] = entry = self._entry(item, {"id": node.id, "netns": node.netns})
            if plan.configures(item.spec):
                entry["digest"] = DIRTY              # complete once binds and exec ran (a deploy may stop first)
            count[0] += 1
            following = [a.name for a in group if a.item is not None and a.item.key not in record["items"]]
            progress(count[0], total, f"start node {following[0]}" if following else f"started {item.name}")

        try:
            batch.start_nodes(self.svc, starts, started)
        except batch.BatchError as exc:
            failed = by_name[exc.failed].name if exc.failed in by_name else exc.failed
            raise LabError(f"start node {failed}: {str(exc).split(': ', 1)[-1]}") from None
        except (PluginError, DaemonUnavailable, ContainerError) as exc:
            raise LabError(f"start nodes: {exc}") from None
        self._save(record)                           # once: the batch is all or nothing
        return count[0]

    def _netns_of(self, record: Record, end: dict[str, Any]) -> str | None:
        if end["kind"] != "node":
            return None
        made = record["items"][f"node:{end['node']}"]["made"]
        return str(made["netns"])

    def _create_link(self, record: Record, action: Action) -> None:
        assert action.item is not None
        spec = action.item.spec
        a_ns, b_ns = self._netns_of(record, spec["a"]), self._netns_of(record, spec["b"])
        links.make_link(record["name"], spec["a"], spec["b"], a_ns, b_ns, spec["mtu"])
        record["items"][action.item.key] = self._entry(action.item, {"netns": a_ns, "ifname": spec["a"]["ifname"]})
        self._save(record)

    def _create_links(self, record: Record, group: list[Action], done: int, total: int,
                      progress: Progress) -> int:
        """Every link of the wave in one ``links.make_links`` (host:IFACE links and multi-address
        ends one by one, as before); each made link is recorded, then the first failure, in
        file order, is raised: a failed link leaves nothing, the others stay."""
        batched: list[tuple[Action, links.NewLink]] = []
        failure: LabError | None = None
        for action in group:
            assert action.item is not None
            spec = action.item.spec
            if links.batchable(spec["a"], spec["b"]):
                new = links.NewLink(spec["a"], spec["b"], self._netns_of(record, spec["a"]),
                                    self._netns_of(record, spec["b"]), spec["mtu"])
                batched.append((action, new))
        if batched:
            progress(done, total, f"create {len(batched)} link(s)")
            errors = links.make_links(record["name"], [new for _, new in batched])
            for (action, new), error in zip(batched, errors, strict=True):
                assert action.item is not None
                if error is not None:
                    failure = failure or LabError(f"{action.describe()}: {error}")
                    continue
                ifname, netns, alias = links.recorded_end(record["name"], new.a, new.b, new.a_netns, new.b_netns)
                record["items"][action.item.key] = self._entry(action.item, {"netns": netns, "ifname": ifname,
                                                                             "alias": alias})
                done += 1
            self._save(record)
        single = {id(a) for a, _ in batched}
        for action in group:
            if id(action) in single:
                continue
            progress(done, total, action.describe())
            try:
                self._step(record, action)
            except LabError as exc:
                failure = failure or exc
                continue
            done += 1
        if failure is not None:
            raise failure
        return done

    def _unpack(self, lab: str, spec: dict[str, Any]) -> str:
        """The node's image tarball unpacked once per content hash under the lab's images dir.

        ``tarfile``'s "tar" filter keeps members inside the target (no absolute paths, no ``..``,
        no links leading out), which a hostile or careless tarball would otherwise exploit.
        """
        target = os.path.join(self.store.images_dir(lab), str(spec["rootfs_sha"])[:16])
        if os.path.isdir(target):
            return target
        partial = target + ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial, mode=0o755)
        try:
            with tarfile.open(str(spec["rootfs_tar"])) as tar:
                tar.extractall(partial, filter="tar")
        except (tarfile.TarError, OSError) as exc:
            shutil.rmtree(partial, ignore_errors=True)
            raise LabError(f"image {spec['rootfs_tar']}: cannot unpack: {exc}") from None
        os.rename(partial, target)
        return target

    def _exec(self, record: Record, action: Action) -> None:
        entry = record["items"][f"node:{action.name}"]
        steps = []
        for bind in action.spec.get("binds") or []:
            steps.append(["mount", "--bind", bind["src"], bind["dst"]])
            if bind["ro"]:
                steps.append(["mount", "-o", "remount,bind,ro", bind["dst"]])
        for argv in steps + action.spec["exec"]:
            code, output = self.exec_captured(str(entry["made"]["id"]), argv)
            if code != 0:
                entry["digest"] = DIRTY                     # re-made by the next deploy
                self._save(record)
                last = output.strip().splitlines()[-1] if output.strip() else ""
                raise LabError(f"exec on node {action.name}: {' '.join(argv)!r} exited {code}"
                               + (f": {last}" if last else ""))
        assert action.item is not None
        entry["digest"] = action.item.digest
        self._save(record)

    def exec_captured(self, cid: str, argv: list[str]) -> tuple[int, str]:
        """Run ``argv`` in the container with its output collected instead of shown."""
        with tempfile.TemporaryFile() as out:
            sys.stdout.flush()
            sys.stderr.flush()
            saved = os.dup(1), os.dup(2)
            try:
                os.dup2(out.fileno(), 1)
                os.dup2(out.fileno(), 2)
                code = self.svc.exec(cid, argv)
            finally:
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                os.close(saved[0])
                os.close(saved[1])
                process.restore_signals()                # exec_in forwarded our signals to its child
            out.seek(0)
            return code, out.read(65536).decode(errors="replace")

    # -- removal --------------------------------------------------------------------------------

    def _remove(self, record: Record, kind: str, name: str) -> None:
        key = f"{kind}:{name}"
        entry = record["items"].get(key)
        if entry is None:
            return
        made = entry.get("made") or {}
        if kind == "link":
            links.remove_link(record["name"], str(made.get("ifname")), made.get("netns"), made.get("alias"))
        elif kind == "node":
            cid = str(made.get("id", ""))
            if cid and self.svc.store.find(cid) is not None:
                self.svc.rm(cid, force=True)
        elif kind == "bridge":
            if made.get("created"):
                links.remove_bridge(record["name"], name)
        elif kind == "network" and made.get("created"):
            try:
                self.svc.engine.inspect_network(str(made["id"]))
            except PluginError:
                pass                                        # gone already
            else:
                self.svc.engine.remove_network(str(made["id"]))   # refuses while anything is attached
        del record["items"][key]
        self._save(record)

    def destroy(self, name: str, progress: Progress = _quiet) -> int:
        """Remove everything the lab made, newest kind first; the record last. Returns the steps."""
        with self.store.locked():
            record = self.store.load(name)
            if record is None:
                raise LabError(f"no lab {name} is deployed")
            entries = sorted(record["items"].values(),
                             key=lambda e: (-plan.ORDER.index(e["kind"]), e["name"]))
            total = len(entries)
            nodes = [e for e in entries if e["kind"] == "node"]
            # A link with an end in a node dies with the node's namespace (both ends, bridge
            # ports too, in one batched kernel teardown): only the others are deleted one by one.
            inside = [e for e in entries if e["kind"] == "link" and "node" in
                      (e["spec"]["a"]["kind"], e["spec"]["b"]["kind"])] if nodes else []
            outside = [e for e in entries if e["kind"] == "link" and id(e) not in {id(i) for i in inside}]
            bridges = [e for e in entries if e["kind"] == "bridge"]
            skipped = {id(e) for e in (*nodes, *inside, *outside, *bridges)}
            done = 0
            if outside:
                progress(done, total, f"remove {len(outside)} link(s)")
                self._remove_host_links(record, outside)
                done += len(outside)
            for entry in entries:
                if entry["kind"] == "node" and nodes:
                    progress(done, total, f"remove {len(nodes)} node(s)")
                    self._remove_nodes(record, nodes, inside)
                    done += len(nodes) + len(inside)
                    nodes = []
                if entry["kind"] == "bridge" and bridges:
                    progress(done, total, f"remove {len(bridges)} bridge(s)")
                    self._remove_bridges(record, bridges)
                    done += len(bridges)
                    bridges = []
                if id(entry) in skipped:
                    continue
                action = Action(REMOVE, entry["kind"], entry["name"], recorded=entry)
                progress(done, total, action.describe())
                self._step(record, action)
                done += 1
            progress(total, total, "done")
            self.store.delete(name)
            return total

    def _remove_host_links(self, record: Record, entries: list[dict[str, Any]]) -> None:
        """Links with no end in a node (bridge to bridge, host to bridge) from one kernel handle."""
        ends = [(str(e["made"].get("ifname")), e["made"].get("netns"), e["made"].get("alias")) for e in entries]
        errors = links.remove_links(record["name"], ends)
        for entry, error in zip(entries, errors, strict=True):
            if error is None:
                del record["items"][f"link:{entry['name']}"]
        self._save(record)
        failed = next(((e, x) for e, x in zip(entries, errors, strict=True) if x is not None), None)
        if failed is not None:
            raise LabError(f"remove link {failed[0]['name']}: {failed[1]}")

    def _remove_bridges(self, record: Record, entries: list[dict[str, Any]]) -> None:
        """The bridges this lab made, from one kernel handle (one it found is left in place)."""
        made = [e for e in entries if (e.get("made") or {}).get("created")]
        errors = links.remove_bridges(record["name"], [e["name"] for e in made])
        failed = {e["name"]: x for e, x in zip(made, errors, strict=True) if x is not None}
        for entry in entries:
            if entry["name"] not in failed:
                del record["items"][f"bridge:{entry['name']}"]
        self._save(record)
        if failed:
            name, error = next(iter(failed.items()))
            raise LabError(f"remove bridge {name}: {error}")

    def _remove_nodes(self, record: Record, nodes: list[dict[str, Any]], inside: list[dict[str, Any]]) -> None:
        """Every node at once through ``batch.stop_many`` (signals, sandboxes, endpoints, hosts
        files and records once for the lot), then the records of the links that went with them."""
        known = set(self.svc.store.ids())
        present = [cid for e in nodes if (cid := str(e["made"].get("id", ""))) in known]
        ports = [end["ifname"] for e in inside for end in (e["spec"]["a"], e["spec"]["b"]) if end["kind"] == "bridge"]
        try:
            # The bridge ports would die with their nodes' namespaces, but only in the kernel's
            # netns cleanup worker, after stop_many returns: they go first, as one group delete,
            # so nothing of the lab is left when destroy reports done (and a redeploy does not
            # meet an old port's name).
            errors = links.remove_links(record["name"], [(name, None, "") for name in ports])
            failed = next((x for x in errors if x is not None), None)
            if failed is not None:
                raise LabError(f"remove link {ports[errors.index(failed)]}: {failed}")
            batch.stop_many(self.svc, present, timeout=0.0)     # as `rm -f` did
        except (PluginError, DaemonUnavailable, ContainerError, KernelError, OSError) as exc:
            raise LabError(f"remove nodes: {exc}") from None
        finally:
            left_ids = set(self.svc.store.ids())
            for entry in nodes:
                if str(entry["made"].get("id", "")) not in left_ids:
                    record["items"].pop(f"node:{entry['name']}", None)
            for entry in inside:
                ends = [e for e in (entry["spec"]["a"], entry["spec"]["b"]) if e["kind"] == "node"]
                if all(f"node:{e['node']}" not in record["items"] for e in ends):
                    record["items"].pop(f"link:{entry['name']}", None)
            self._save(record)

    # -- reading --------------------------------------------------------------------------------

    def record(self, name: str) -> Record:
        record = self.store.load(name)
        if record is None:
            raise LabError(f"no lab {name} is deployed")
        return record

    def node_id(self, name: str, node: str) -> str:
        entry = self.record(name)["items"].get(f"node:{node}")
        if entry is None:
            raise LabError(f"lab {name} has no node {node}")
        return str(entry["made"]["id"])

    def ls(self) -> list[dict[str, Any]]:
        rows = []
        for name in self.store.names():
            record = self.store.load(name) or {}
            items = list((record.get("items") or {}).values())
            nodes = [e for e in items if e["kind"] == "node"]
            rows.append({"Name": name, "File": record.get("file", ""), "Nodes": len(nodes),
                         "Running": sum(self._running(str(e["made"].get("id", ""))) for e in nodes),
                         "Networks": sum(e["kind"] == "network" for e in items),
                         "Links": sum(e["kind"] == "link" for e in items)})
        return rows

    @staticmethod
    def _host_ends(items: dict[str, Any]) -> list[dict[str, Any]]:
        """The lab's link ends in the host's namespace (bridge ports, host:IFACE), from the kernel."""
        names = {e["ifname"] for entry in items.values() if entry["kind"] == "link"
                 for e in (entry["spec"]["a"], entry["spec"]["b"]) if e["kind"] in ("bridge", "host")}
        if not names:
            return []
        try:
            return [i for i in links.interfaces(None) if i["name"] in names]
        except (KernelError, OSError):
            return []

    def inspect(self, name: str) -> dict[str, Any]:
        record = self.record(name)
        items = record["items"]
        nodes = []
        for entry in sorted((e for e in items.values() if e["kind"] == "node"), key=lambda e: e["name"]):
            cid = str(entry["made"].get("id", ""))
            state: dict[str, Any] = {}
            if cid and self.svc.store.find(cid) is not None:
                state = self.svc.inspect(cid)["State"]
            running = state.get("status") == "running"
            ifaces = []
            if running:
                with contextlib.suppress(KernelError, OSError):
                    ifaces = links.interfaces(str(entry["made"]["netns"]))
            nodes.append({"Name": entry["name"], "Container": entry["spec"]["container"], "Id": cid,
                          "Kind": "linux", "Image": entry.get("extra", {}).get("image"),
                          "Labels": entry.get("extra", {}).get("labels", {}),
                          "Status": state.get("status", "missing"), "Pid": state.get("pid", 0) if running else 0,
                          "Interfaces": ifaces})
        host_ends = self._host_ends(items)
        for entry in sorted((e for e in items.values() if e["kind"] == "bridge"), key=lambda e: e["name"]):
            ports = [i for i in host_ends if i["master"] == entry["name"]]
            nodes.append({"Name": entry["name"], "Container": "", "Id": "", "Kind": "bridge", "Image": None,
                          "Labels": entry.get("extra", {}).get("labels", {}), "Status": "host bridge", "Pid": 0,
                          "Interfaces": ports})
        networks = []
        for entry in sorted((e for e in items.values() if e["kind"] == "network"), key=lambda e: e["name"]):
            spec = entry["spec"]
            try:
                net = self.svc.engine.inspect_network(str(entry["made"]["id"]))
                subnets = [d["Pool"] for d in (*net.get("IPv4", []), *net.get("IPv6", []))]
            except PluginError:
                subnets = []
            networks.append({"Name": entry["name"], "Driver": spec["driver"], "Subnets": subnets,
                             "Management": spec["mgmt"], "Created": bool(entry["made"].get("created"))})
        link_rows = []
        for entry in sorted((e for e in items.values() if e["kind"] == "link"), key=lambda e: e["name"]):
            spec = entry["spec"]
            link_rows.append({"Name": entry["name"], "MTU": spec["mtu"],
                              "Endpoints": [{"Node": e["node"], "Interface": e["ifname"], "Addresses": e["addresses"]}
                                            for e in (spec["a"], spec["b"])]})
        return {"Name": name, "File": record.get("file", ""), "Nodes": nodes, "Networks": networks,
                "Links": link_rows, "HostInterfaces": [i for i in host_ends if not i["master"]]}
