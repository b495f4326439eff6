"""`POST /v1/workflows` specs: checked (every leaf against the catalog, like a job) and turned into job rows.

A node is a leaf `{"task", "args", "weight"?, "queue"?, "priority"?}`, `{"chain": [node…]}`,
`{"group": [node…]}` or `{"chord": {"group": [node…], "then": node}}` (nodes may carry a `weight` too).
Every problem is named by its path in the spec (`spec.chain[1].group[0].args.size`); one 422 lists them all.
A list (a chain's steps, a group's members) of more than MAX_LEAVES nodes, or a spec of more than MAX_TASKS tasks,
is refused with 413 before any task is checked.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from longrun_common.models import Job
from longrun_common.workflows import CONTINUE, FAIL_FAST, KIND_WORKFLOW, initial_positions

from .errors import ApiError, field_path, invalid_many
from .submission import JobRequest, build_job

if TYPE_CHECKING:
    from .submission import Gateway

MAX_LEAVES = 1000  # nodes in one chain or group (a chord of 1,000 members and its `then` fits)
MAX_TASKS = 2000  # tasks in one workflow
MAX_NODES = 4000  # tasks and chain/group/chord nodes together
MAX_DEPTH = 12  # nesting; the roll-up (rollup.MAX_DEPTH) covers every level
MAX_ERRORS = 50
MAX_WEIGHT = 1e9
_LEAF_KEYS = {"task", "args", "weight", "queue", "priority"}
_SHAPES = ("chain", "group", "chord")


class WorkflowRequest(BaseModel):
    """`POST /v1/workflows` body; the spec itself is checked node by node (see `build`)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    spec: dict[str, Any]
    on_failure: Literal["fail_fast", "continue"] = "fail_fast"


@dataclass
class _Node:
    """A checked node: a leaf's row, or a shape with its children (a chord's `then` last)."""

    path: str
    shape: str | None = None
    job: Job | None = None
    weight: float | None = None
    children: list[_Node] = field(default_factory=list)
    leaves: int = 0


class _Checker:
    def __init__(self, gateway: Gateway, tenant: str):
        self.gateway, self.tenant = gateway, tenant
        self.problems: list[dict[str, Any]] = []
        self.leaves = self.nodes = 0

    def problem(self, path: str, message: str) -> None:
        self.problems.append({"field": path, "message": message})

    def node(self, value: Any, path: str, depth: int) -> _Node | None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _too_large(f"more than {MAX_NODES} nodes")
        if not isinstance(value, dict):
            self.problem(path, "must be an object: a task {task, args} or one of chain, group, chord")
            return None
        if depth > MAX_DEPTH:
            self.problem(path, f"nested deeper than {MAX_DEPTH} levels")
            return None
        shapes = [s for s in _SHAPES if s in value]
        if "task" in value and not shapes:
            return self.leaf(value, path)
        if len(shapes) != 1 or "task" in value:
            self.problem(path, "must have exactly one of task, chain, group, chord")
            return None
        shape = shapes[0]
        weight = self.weight(value, path)
        for key in sorted(set(value) - {shape, "weight"}):
            self.problem(f"{path}.{key}", f"unknown field in a {shape} node (allowed: {shape}, weight)")
        node = _Node(path, shape=shape, weight=weight)
        if shape == "chord":
            body = value["chord"]
            if not isinstance(body, dict):
                self.problem(f"{path}.chord", "must be an object {group: [node…], then: node}")
                return None
            for key in sorted(set(body) - {"group", "then"}):
                self.problem(f"{path}.chord.{key}", "unknown field in a chord (allowed: group, then)")
            node.children = self.members(body.get("group"), f"{path}.chord.group", depth)
            if "then" not in body:
                self.problem(f"{path}.chord.then", "is required: the step that receives the group's results")
            else:
                then = self.node(body["then"], f"{path}.chord.then", depth + 1)
                if then is not None:
                    node.children.append(then)
        else:
            node.children = self.members(value[shape], f"{path}.{shape}", depth)
        node.leaves = sum(child.leaves for child in node.children)
        return node

    def members(self, value: Any, path: str, depth: int) -> list[_Node]:
        if not isinstance(value, list) or not value:
            self.problem(path, "must be a non-empty list of nodes")
            return []
        if len(value) > MAX_LEAVES:
            raise _too_large(f"{path} has {len(value)} nodes, more than {MAX_LEAVES}")
        checked = [self.node(item, f"{path}[{index}]", depth + 1) for index, item in enumerate(value)]
        return [c for c in checked if c is not None]

    def weight(self, value: Mapping[str, Any], path: str) -> float | None:
        weight = value.get("weight")
        if weight is None:
            return None
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 < weight <= MAX_WEIGHT \
                or not math.isfinite(weight):
            self.problem(f"{path}.weight", f"must be a number above 0 and at most {MAX_WEIGHT:g}")
            return None
        return float(weight)

    def leaf(self, value: dict[str, Any], path: str) -> _Node | None:
        self.leaves += 1
        if self.leaves > MAX_TASKS:
            raise _too_large(f"more than {MAX_TASKS} tasks")
        weight = self.weight(value, path)
        for key in sorted(set(value) - _LEAF_KEYS):
            self.problem(f"{path}.{key}", f"unknown field in a task node (allowed: {', '.join(sorted(_LEAF_KEYS))})")
        fields = {k: v for k, v in value.items() if k in _LEAF_KEYS - {"weight"}}
        try:
            request = JobRequest.model_validate(fields, strict=True)
            job = build_job(self.gateway, self.tenant, request)
        except ValidationError as exc:
            for error in exc.errors():
                self.problem(field_path(error["loc"], root=path + "."), error["msg"])
            return None
        except ApiError as exc:
            if exc.status_code != 422:
                raise  # a 503 (catalog not ready) is about the service, not this spec
            for detail in exc.details if isinstance(exc.details, list) else []:
                inner = str(detail.get("field") or "")
                self.problem(f"{path}.{inner}" if inner and inner != "body" else path, str(detail.get("message")))
            return None
        return _Node(path, job=job, weight=weight, leaves=1)


def _too_large(what: str) -> ApiError:
    return ApiError(413, f"workflow too large: {what}; split it into several workflows",
                    code="payload_too_large",
                    details={"max_list": MAX_LEAVES, "max_tasks": MAX_TASKS, "max_nodes": MAX_NODES})


def build(gateway: Gateway, tenant: str, request: WorkflowRequest) -> list[Job]:
    """The workflow's rows, root first and parents before children; 422 naming every problem by its path."""
    checker = _Checker(gateway, tenant)
    root = checker.node(request.spec, "spec", 1)
    if checker.problems or root is None:
        raise invalid_many(checker.problems[:MAX_ERRORS] or [{"field": "spec", "message": "invalid"}])
    if root.shape is None:  # a single task still gets a workflow around it
        root = _Node("spec", shape="chain", children=[root], leaves=1)
    rows: list[Job] = []
    _rows(root, tenant, request.on_failure, rows, parent=None, position=None, runnable=True)
    return rows


def _rows(node: _Node, tenant: str, on_failure: str, rows: list[Job], *, parent: Job | None, position: int | None,
          runnable: bool) -> None:
    root_id = (parent.root_id or parent.id) if parent is not None else None
    flow: dict[str, Any] = {}
    if node.weight is not None:
        flow["weight"] = node.weight
    if node.path.endswith(".then"):
        flow["then"] = True
    if node.job is not None:
        job = node.job
        job.flow = flow or None
    else:
        assert node.shape is not None
        flow.update(type=node.shape, on_failure=on_failure, leaves=node.leaves)
        job = Job(tenant=tenant, task=f"workflow.{node.shape}", kind=KIND_WORKFLOW, args={}, flow=flow,
                  pending=len(node.children), queue="workflow")
    job.parent_id = parent.id if parent is not None else None
    job.root_id = root_id
    job.position = position
    job.waiting = not runnable
    rows.append(job)
    first = set(initial_positions(job, len(node.children)))
    for index, child in enumerate(node.children):
        _rows(child, tenant, on_failure, rows, parent=job, position=index, runnable=runnable and index in first)


__all__ = ["CONTINUE", "FAIL_FAST", "MAX_LEAVES", "WorkflowRequest", "build"]
