"""A hand-written Python-backend model serving the streaming RAG example (examples/rag_stream) three
ways, for benchmarks/streaming.py; the `mode` parameter of config.pbtxt says which:

* ``batched`` (decoupled): continuous batching. ``execute`` hands the new requests to a stepping
  thread, which retrieves and prefills (``Generate.start``) the newcomers, then advances every stream
  in flight with one ``Generate.step`` and sends each its token; a stream leaves when done, a new one
  joins at the next step. Everything numeric runs on that one thread: a second Python thread doing
  numpy work (the prefill in ``execute``) would wait for the GIL at every operation while the
  stepping thread holds it (up to the 5 ms switch interval each time), and newcomers would wait
  hundreds of milliseconds to join.
* ``single`` (decoupled): the plain generator (``Generate.__call__``), one stream at a time in
  arrival order: what serving the same generator without batching gives.
* ``static`` (not decoupled): Triton's dynamic batcher hands a batch of questions to ``execute``,
  which steps them together until all finish and answers each once, with all its tokens.

The example's ``stream_handlers`` package is copied next to this file (benchmarks/streaming.py does).
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from stream_handlers import Generate, Retrieve  # noqa: E402


def _tensors(response: dict[str, np.ndarray]) -> list[Any]:
    return [pb_utils.Tensor(name, array.reshape(-1)) for name, array in response.items()]


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.mode = params.get("mode", "batched")
        # the stepping thread and the stub's own thread (requests in, responses out) hand the GIL to
        # each other at every send: at the default 5 ms switch interval a waiting thread stalls a step
        sys.setswitchinterval(float(params.get("switch_interval_s", "0.005")))
        handler_parameters = json.loads(params.get("handler_parameters", "{}"))
        self.retrieve = Retrieve({}, "cpu")
        self.generate = Generate(handler_parameters, "cpu")
        self.running = True
        self.joining: list[tuple[Any, Any]] = []  # (request's query, response sender)
        self.wake = threading.Condition()
        self.queue: queue.Queue[Any] = queue.Queue()
        if self.mode in ("batched", "single"):
            target = self._step_loop if self.mode == "batched" else self._one_at_a_time
            self.thread = threading.Thread(target=target, daemon=True)
            self.thread.start()

    def _inputs(self, requests: list[Any]) -> list[dict[str, np.ndarray]]:
        return self._retrieved(
            [pb_utils.get_input_tensor_by_name(r, "query").as_numpy().reshape(-1)[:1] for r in requests]
        )

    def _retrieved(self, queries: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Each question and its retrieved passage (one retrieval for all of them)."""
        query = np.stack(queries)
        passage = self.retrieve(query)["passage"]
        return [{"query": query[i : i + 1], "passage": passage[i : i + 1]} for i in range(len(queries))]

    def execute(self, requests: list[Any]) -> Any:
        if self.mode == "batched":
            queries = [pb_utils.get_input_tensor_by_name(r, "query").as_numpy().reshape(-1)[:1] for r in requests]
            with self.wake:
                self.joining += [(q, r.get_response_sender()) for q, r in zip(queries, requests)]
                self.wake.notify()
            return None
        inputs = self._inputs(requests)
        if self.mode == "single":
            for request, i in zip(requests, inputs):
                self.queue.put((i, request.get_response_sender()))
            return None
        # static: the batch advances together; every answer leaves at the end, whole
        states = [self.generate.start(**i) for i in inputs]
        tokens: list[list[bytes]] = [[] for _ in states]
        live = list(range(len(states)))
        while live:
            out = self.generate.step([states[i] for i in live])
            live_next = []
            for i, response in zip(live, out):
                if response is not None:
                    tokens[i].append(response["token"][0, 0])
                    live_next.append(i)
            live = live_next
        return [
            pb_utils.InferenceResponse(
                output_tensors=[
                    pb_utils.Tensor("token", np.array(t, dtype=np.object_).reshape(1, -1)),
                    pb_utils.Tensor("index", np.arange(len(t), dtype=np.int32).reshape(1, -1)),
                ]
            )
            for t in tokens
        ]

    def _step_loop(self) -> None:
        active: list[tuple[Any, Any]] = []
        while self.running:
            with self.wake:
                while not active and not self.joining and self.running:
                    self.wake.wait(timeout=0.5)
                joining, self.joining = self.joining, []
            try:
                if joining:  # retrieve and prefill the newcomers; they join this step
                    inputs = self._retrieved([query for query, _ in joining])
                    active += [(self.generate.start(**i), sender) for i, (_, sender) in zip(inputs, joining)]
                    joining = []
                if not active:
                    continue
                responses = self.generate.step([state for state, _ in active])
            except Exception as exc:  # noqa: BLE001 - fail the streams in flight, keep serving
                error = pb_utils.TritonError(f"generate failed: {exc}")
                for sender in [s for _, s in active] + [s for _, s in joining]:
                    sender.send(
                        pb_utils.InferenceResponse(error=error), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
                    )
                active = []
                continue
            kept = []
            for (state, sender), response in zip(active, responses):
                if response is None:
                    sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                else:
                    sender.send(pb_utils.InferenceResponse(output_tensors=_tensors(response)))
                    kept.append((state, sender))
            active = kept
            time.sleep(0)  # hand the GIL to the stub's thread now: a newcomer's execute waits for it

    def _one_at_a_time(self) -> None:
        while self.running:
            try:
                inputs, sender = self.queue.get(timeout=0.5)
            except queue.Empty:
                continue
            for response in self.generate(**inputs):
                sender.send(pb_utils.InferenceResponse(output_tensors=_tensors(response)))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def finalize(self) -> None:
        self.running = False
        with self.wake:
            self.wake.notify()
        thread = getattr(self, "thread", None)
        if thread is not None:
            thread.join(timeout=5)
