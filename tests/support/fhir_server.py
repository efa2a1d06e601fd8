"""A small in-memory FHIR R4 server + webhook receiver (aiohttp, in a thread) for sink tests.

Implements the REST semantics the sinks rely on, the way HAPI / cloud FHIR APIs do:

- ``PUT [type]/[id]``: update-as-create; 201 on create, 200 on update; a new version only
  when the content (ignoring ``meta``) changed; ``ETag: W/"<version>"``.
- ``PUT [type]?identifier=system|value``: conditional update (0 match → create, 1 → update,
  more → 412).
- ``POST /`` with a ``transaction`` Bundle: all-or-nothing — every entry validated before any
  is applied, one bad entry → 400 OperationOutcome and nothing written; the same resource
  twice in one transaction → 400.
- validation a real server does too, e.g. ``Patient.gender`` must be in its value set;
- ``GET [type]/[id]`` (+ ``/_history`` count via ``versions``).
- ``POST /hook``: webhook receiver deduplicating on ``Idempotency-Key``; 422 for events
  whose ``event_type`` is ``REJECT``.

Fault injection: ``fail_next(n, status)`` answers the next n requests with ``status``.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def _outcome(status: int, message: str) -> web.Response:
    body = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "invalid",
                                                             "diagnostics": message}]}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/fhir+json")


def _content(resource: dict[str, Any]) -> bytes:
    return orjson.dumps({k: v for k, v in resource.items() if k != "meta"}, option=orjson.OPT_SORT_KEYS)


@dataclass
class FhirTestServer:
    resources: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    versions: dict[tuple[str, str], int] = field(default_factory=dict)
    requests: int = 0
    transactions: int = 0
    hook_deliveries: dict[str, int] = field(default_factory=dict)  # idempotency key -> times received
    hook_accepted: list[str] = field(default_factory=list)  # keys processed (once each)
    hook_last: dict[str, tuple[bytes, str | None]] = field(default_factory=dict)  # key -> (body, signature)
    _faults: list[int] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None
    port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    @property
    def hook_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def fail_next(self, n: int, status: int = 503) -> None:
        self._faults.extend([status] * n)

    # --- FHIR semantics ------------------------------------------------------------------------
    def _validate(self, rtype: str, rid: str | None, res: Any) -> str | None:
        if not isinstance(res, dict) or res.get("resourceType") != rtype:
            return f"resourceType must be {rtype}"
        if rid is not None and res.get("id") != rid:
            return f"resource id {res.get('id')!r} does not match URL id {rid!r}"
        if rid is not None and not ID_RE.match(rid):
            return f"invalid id {rid!r}"
        if rtype == "Patient" and res.get("gender") not in (None, "male", "female", "other", "unknown"):
            return f"Patient.gender: {res.get('gender')!r} is not in the AdministrativeGender value set"
        return None

    def _put(self, rtype: str, rid: str, res: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        key = (rtype, rid)
        old = self.resources.get(key)
        if old is not None and _content(old) == _content(res):
            return 200, old  # no-op update: no new version (as HAPI does)
        version = self.versions.get(key, 0) + 1
        stored = {**res, "meta": {**(res.get("meta") or {}), "versionId": str(version)}}
        self.resources[key], self.versions[key] = stored, version
        return (201 if old is None else 200), stored

    def _match(self, rtype: str, identifier: str) -> list[str]:
        system, _, value = identifier.rpartition("|")
        return [rid for (t, rid), r in self.resources.items() if t == rtype and any(
            i.get("value") == value and (not system or i.get("system") == system) for i in r.get("identifier", []))]

    def _resolve_put(self, url: str, res: Any) -> tuple[str, str] | str:
        """(type, id) a PUT url targets, or an error message."""
        path, _, query = url.partition("?")
        parts = path.strip("/").split("/")
        if len(parts) == 2:
            err = self._validate(parts[0], parts[1], res)
            return err or (parts[0], parts[1])
        if len(parts) == 1 and query.startswith("identifier="):
            err = self._validate(parts[0], None, res)
            if err:
                return err
            matches = self._match(parts[0], query.removeprefix("identifier="))
            if len(matches) > 1:
                return "412:multiple matches for conditional update"
            rid = matches[0] if matches else (res.get("id") or f"gen-{len(self.resources) + 1}")
            return parts[0], rid
        return f"unsupported url {url!r}"

    async def _handle_put(self, request: web.Request) -> web.Response:
        res = orjson.loads(await request.read())
        target = self._resolve_put(request.match_info["tail"] + (f"?{request.query_string}"
                                                                 if request.query_string else ""), res)
        if isinstance(target, str):
            return _outcome(412 if target.startswith("412:") else 400, target)
        status, stored = self._put(target[0], target[1], {**res, "id": target[1]})
        return web.Response(status=status, body=orjson.dumps(stored), content_type="application/fhir+json",
                            headers={"ETag": f'W/"{stored["meta"]["versionId"]}"',
                                     "Location": f"{self.base_url}/{target[0]}/{target[1]}/_history/"
                                                 f"{stored['meta']['versionId']}"})

    async def _handle_get(self, request: web.Request) -> web.Response:
        parts = request.match_info["tail"].strip("/").split("/")
        if parts == ["metadata"]:
            return web.json_response({"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1"})
        res = self.resources.get((parts[0], parts[1])) if len(parts) == 2 else None
        if res is None:
            return _outcome(404, "not found")
        return web.Response(body=orjson.dumps(res), content_type="application/fhir+json")

    async def _handle_transaction(self, request: web.Request) -> web.Response:
        bundle = orjson.loads(await request.read())
        if bundle.get("resourceType") != "Bundle" or bundle.get("type") != "transaction":
            return _outcome(400, "expected a transaction Bundle")
        planned: list[tuple[str, str, dict[str, Any]]] = []
        seen: set[tuple[str, str]] = set()
        for i, entry in enumerate(bundle.get("entry") or []):  # validate everything before applying anything
            req = entry.get("request") or {}
            if req.get("method") != "PUT":
                return _outcome(400, f"entry {i}: only PUT is supported here")
            target = self._resolve_put(req.get("url", ""), entry.get("resource"))
            if isinstance(target, str):
                return _outcome(400, f"entry {i}: {target}")
            if target in seen:
                return _outcome(400, f"entry {i}: {target[0]}/{target[1]} appears twice in the transaction")
            seen.add(target)
            planned.append((target[0], target[1], entry["resource"]))
        out = []
        for rtype, rid, res in planned:
            status, stored = self._put(rtype, rid, {**res, "id": rid})
            out.append({"response": {"status": f"{status} {'Created' if status == 201 else 'OK'}",
                                     "location": f"{rtype}/{rid}/_history/{stored['meta']['versionId']}",
                                     "etag": f'W/"{stored["meta"]["versionId"]}"'}})
        self.transactions += 1
        return web.Response(body=orjson.dumps({"resourceType": "Bundle", "type": "transaction-response",
                                               "entry": out}), content_type="application/fhir+json")

    async def _handle_hook(self, request: web.Request) -> web.Response:
        key = request.headers.get("Idempotency-Key")
        if not key:
            return web.json_response({"error": "Idempotency-Key required"}, status=400)
        raw = await request.read()
        event = orjson.loads(raw)
        self.hook_last[key] = (raw, request.headers.get("X-Clinstream-Signature"))
        self.hook_deliveries[key] = self.hook_deliveries.get(key, 0) + 1
        if event.get("event_type") == "REJECT":
            return web.json_response({"error": "unprocessable event"}, status=422)
        if key not in self.hook_accepted:  # a repeated key is the same delivery: processed once
            self.hook_accepted.append(key)
        return web.json_response({"accepted": key})

    @web.middleware
    async def _faulty(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests += 1
        if self._faults:
            return _outcome(self._faults.pop(0), "injected fault")
        return await handler(request)

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> FhirTestServer:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application(middlewares=[self._faulty], client_max_size=64 * 1024 * 1024)
            app.router.add_post("/hook", self._handle_hook)
            app.router.add_post("/fhir", self._handle_transaction)
            app.router.add_post("/fhir/", self._handle_transaction)
            app.router.add_put("/fhir/{tail:.*}", self._handle_put)
            app.router.add_get("/fhir/{tail:.*}", self._handle_get)
            self._runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(self._runner.setup())
            loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=serve, name="fhir-test-server", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("FHIR test server did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = self._thread = None

    def __enter__(self) -> FhirTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
