"""An MLServer 1.7 custom runtime that serves an nnmark checkpoint in one of ``shapes.SHAPES``.

Runs in the MLServer virtualenv (``make interop-envs``). Each model's ``model-settings.json`` names
this runtime (``"implementation": "mlserver_runtime.NnmarkRuntime"``), the checkpoint
(``parameters.uri``) and the shape and dtype (``parameters.extra``: ``{"shape": ..., "dtype": ...}``);
its ``inputs``/``outputs`` metadata is ``shapes.metadata``. Outputs are encoded as they come
(``shapes.Served`` already gives the label column its [N, 1]).
"""

from __future__ import annotations

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.errors import MLServerError
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput

from shapes import Served, datatype


class NnmarkRuntime(MLModel):
    """Loads the checkpoint once; answers each request with the shape's named outputs (HTTP 400 on a wrong input)."""

    async def load(self) -> bool:
        params = self.settings.parameters
        extra = params.extra or {}
        self._served = Served(params.uri, extra["shape"], extra.get("dtype", "float32"))
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        if len(payload.inputs) != 1:
            raise MLServerError(f"expected one input, got {len(payload.inputs)}")
        try:
            answers = self._served(NumpyCodec.decode_input(payload.inputs[0]))
        except ValueError as e:
            raise MLServerError(str(e)) from None
        outputs = [ResponseOutput(name=name, shape=list(a.shape), datatype=datatype(a),
                                  data=a.flatten().tolist()) for name, a in answers.items()]
        return InferenceResponse(model_name=self.name, model_version=self.version, id=payload.id, outputs=outputs)
