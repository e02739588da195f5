"""The save stage: the compressed file, `model.gmpz`.

`run` encodes the cleaned-up weights (`cleanup/quantized.gmpz`) with the
config's codebook dtype (`postprocess.codebook_dtype`) and the student's
model name as the file's only metadata (`OUTPUTS`). It computes nothing on
the mesh: in a multi-process run only process 0 runs it (`HOST_ONLY`).
"""

from __future__ import annotations

from typing import Any

import gmp_jax
from experiments.infra import workdir_layout

COMPRESSED_FILE = workdir_layout.COMPRESSED_FILE
OUTPUTS = (COMPRESSED_FILE,)
HOST_ONLY = True


def run(ctx) -> dict[str, Any]:
  """The compressed file, with the model name as its only metadata."""
  quantized = gmp_jax.load_compressed(ctx.path('cleanup', 'quantized.gmpz'))
  file_bytes = gmp_jax.save_compressed(
      ctx.path(COMPRESSED_FILE), quantized,
      metadata={'model': ctx.results['retrain']['student']},
      codebook_dtype=ctx.config.postprocess.codebook_dtype)
  return {'compressed_file': COMPRESSED_FILE, 'file_bytes': file_bytes}
