"""The postprocess stage: merge the mixture's components, prune, quantise.

`run` reads the retrained weights and mixture (`retrain.load_retrained`),
merges components closer than `postprocess.merge_threshold`, then down to
at most `postprocess.max_components` values (`gmp_jax.merge_components`,
`evaluation.merge_options`), sets every weight to its component's mean
(the zero component's weights to 0, `gmp_jax.quantize`), evaluates, and
writes `postprocess/quantized.gmpz` (`OUTPUTS`) with float32 codebooks,
which hold float32 weights exactly, and the merged mixture as metadata.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

import gmp_jax
from experiments.infra import evaluation
from experiments.infra import monitor
from experiments.stages import retrain

QUANTIZED_FILE = 'postprocess/quantized.gmpz'
OUTPUTS = (QUANTIZED_FILE,)


def run(ctx) -> dict[str, Any]:
  """Merges components, prunes and quantises; evaluates."""
  student, params, mixture = retrain.load_retrained(ctx)
  merged = gmp_jax.merge_components(
      mixture, **evaluation.merge_options(ctx.config))
  quantized = gmp_jax.quantize(params, merged)
  test = ctx.evaluator(student)(quantized)
  # float32 codebooks hold float32 weights exactly.
  if ctx.is_writer:
    gmp_jax.save_compressed(
        ctx.path(QUANTIZED_FILE), jax.device_get(quantized),
        codebook_dtype='float32', metadata={
            'mixture_means': np.asarray(merged.means),
            'mixture_variances': np.asarray(merged.variances),
            'mixture_proportions': np.asarray(merged.mixing_proportions)})
  monitor.log_info('postprocess: %d -> %d components, pruned test %s %.4f',
                   mixture.num_components, merged.num_components, ctx.metric,
                   test[ctx.metric])
  return {f'test_{ctx.metric}': test[ctx.metric],
          **ctx.valid_record(student, quantized),
          'components_before_merge': mixture.num_components,
          'components_after_merge': merged.num_components}
