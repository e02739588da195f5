"""experiments.tools.tensorboard: the event files read back by an independent reader.

The reader below parses the TFRecord framing itself and checks every record's
CRC-32C (computed here bit by bit, not with the writer's code); only the
protobuf message classes come from tensorboardX.
"""

import glob
import json
import os
import struct

import numpy as np
import pytest

from experiments.infra import cli
from experiments.tools import tensorboard


def _event_pb2():
  # Imported here, not at collection: tensorboardX imports torch when it can
  # (seconds per test process); the writer's own import hides it.
  tensorboard._import_tensorboardx()
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  return event_pb2


def _crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
  return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _read_events(logdir):
  """Every Event in every event file of `logdir`, CRCs checked."""
  event_pb2 = _event_pb2()
  events = []
  for path in sorted(glob.glob(os.path.join(logdir, 'events.out.tfevents.*'))):
    data = open(path, 'rb').read()
    pos = 0
    while pos < len(data):
      header = data[pos:pos + 8]
      (length,) = struct.unpack('<Q', header)
      (length_crc,) = struct.unpack('<I', data[pos + 8:pos + 12])
      assert length_crc == _masked(_crc32c(header)), path
      payload = data[pos + 12:pos + 12 + length]
      (payload_crc,) = struct.unpack(
          '<I', data[pos + 12 + length:pos + 16 + length])
      assert payload_crc == _masked(_crc32c(payload)), path
      events.append(event_pb2.Event.FromString(payload))
      pos += 16 + length
  return events


def _scalars(events):
  out = {}
  for e in events:
    for v in e.summary.value:
      if v.HasField('simple_value'):
        out.setdefault(v.tag, []).append((e.step, v.simple_value))
  return out


def _histograms(events):
  out = {}
  for e in events:
    for v in e.summary.value:
      if v.HasField('histo'):
        out.setdefault(v.tag, []).append((e.step, v.histo))
  return out


RECORDS = [
    {'stage': 'teacher', 'step': 10, 'epoch': 1, 'loss': 0.5,
     'test_accuracy': 0.9, 'note': 'text is skipped', 'lr': None},
    {'stage': 'retrain', 'step': 4, 'epoch': 1, 'loss': -1.25,
     'data_loss': 0.25, 'complexity_loss': -3e6, 'test_accuracy': 0.95,
     'test_pruned_accuracy': 0.93, 'nonzero_fraction': 0.05,
     'mixture_means': [0.0, -0.5, 0.25, 0.75],
     'mixture_stds': np.array([0.01, 0.02, 0.03, 0.04], np.float32),
     'mixture_pis': [0.9, 0.05, 0.03, 0.02],
     'timing': {'epoch_seconds': 12.5}},
    {'stage': 'retrain', 'step': 8, 'epoch': 2, 'loss': -2.5,
     'test_accuracy': 0.96, 'test_pruned_accuracy': 0.94,
     'nonzero_fraction': 0.04, 'mixture_means': [0.0, -0.4, 0.2, 0.7],
     'mixture_stds': [0.01, 0.02, 0.03, 0.04],
     'mixture_pis': [0.92, 0.04, 0.02, 0.02]},
]


def test_records_read_back(tmp_path):
  logdir = str(tmp_path / 'tb')
  with tensorboard.TensorBoardWriter(logdir) as writer:
    for record in RECORDS:
      writer.write(record)
  events = _read_events(logdir)
  scalars = _scalars(events)

  # Every numeric scalar of every record, under <stage>/<key>, at its step.
  expected = {}
  for r in RECORDS:
    for k, v in r.items():
      if k in ('stage', 'step') or v is None or isinstance(v, str):
        continue
      if isinstance(v, dict):
        for k2, v2 in v.items():
          expected.setdefault(f"{r['stage']}/{k}/{k2}", []).append(
              (r['step'], v2))
      elif np.ndim(v) == 0:
        expected.setdefault(f"{r['stage']}/{k}", []).append((r['step'], v))
      else:
        for i, x in enumerate(v):
          expected.setdefault(f"{r['stage']}/{k}/{i}", []).append(
              (r['step'], x))
  assert set(scalars) == set(expected)
  for tag, points in expected.items():
    got = scalars[tag]
    assert [s for s, _ in got] == [s for s, _ in points], tag
    np.testing.assert_allclose([x for _, x in got], [x for _, x in points],
                               rtol=1e-6, err_msg=tag)
  assert 'teacher/note' not in scalars and 'teacher/lr' not in scalars

  # The mixture lists also as histograms: count, min, max, sum.
  hists = _histograms(events)
  assert set(hists) == {f'retrain/mixture_{k}'
                        for k in ('means', 'stds', 'pis')}
  for r in RECORDS[1:]:
    for k in ('means', 'stds', 'pis'):
      values = np.asarray(r[f'mixture_{k}'], np.float64)
      ((step, h),) = [p for p in hists[f'retrain/mixture_{k}']
                      if p[0] == r['step']]
      assert h.num == values.size
      np.testing.assert_allclose([h.min, h.max, h.sum],
                                 [values.min(), values.max(), values.sum()],
                                 rtol=1e-6)
      assert sum(h.bucket) == values.size


def test_jsonl_conversion_and_resume(tmp_path):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  with open(workdir / 'metrics.jsonl', 'w') as f:
    for r in RECORDS[:2]:
      r = {k: (v.tolist() if isinstance(v, np.ndarray) else v)
           for k, v in r.items()}
      f.write(json.dumps(r) + '\n')
    f.write('{"stage": "retrain", "st')  # Torn last line of a killed run.
  assert cli.call(tensorboard, [str(workdir)]) == 0
  logdir = str(workdir / 'tensorboard')
  assert _scalars(_read_events(logdir))['retrain/loss'] == [(4, -1.25)]
  # A resumed run appends a second event file; both are read.
  with tensorboard.TensorBoardWriter(logdir) as writer:
    writer.write(RECORDS[2])
  assert len(glob.glob(os.path.join(logdir, 'events.out.tfevents.*'))) == 2
  assert _scalars(_read_events(logdir))['retrain/loss'] == [(4, -1.25),
                                                            (8, -2.5)]


def test_corrupt_event_file_is_detected(tmp_path):
  # The reader this test relies on does check the CRCs.
  logdir = str(tmp_path)
  with tensorboard.TensorBoardWriter(logdir) as writer:
    writer.write(RECORDS[0])
  (path,) = glob.glob(os.path.join(logdir, 'events.out.tfevents.*'))
  data = bytearray(open(path, 'rb').read())
  data[-6] ^= 0xFF
  open(path, 'wb').write(bytes(data))
  with pytest.raises(AssertionError):
    _read_events(logdir)


@pytest.mark.parametrize('record, error, match', [
    ({'loss': 1.0}, ValueError, 'step'),
    ({'step': 1.5, 'loss': 1.0}, ValueError, 'step'),
    ({'step': True, 'loss': 1.0}, ValueError, 'step'),
    ({'step': 1, 'stage': 's', 'loss': object()}, TypeError, 's/loss'),
    ({'step': 1, 'stage': 's', 'x': ['a', 'b']}, TypeError, 's/x'),
])
def test_bad_records(tmp_path, record, error, match):
  with tensorboard.TensorBoardWriter(str(tmp_path)) as writer:
    with pytest.raises(error, match=match):
      writer.write(record)


def test_write_after_close(tmp_path):
  writer = tensorboard.TensorBoardWriter(str(tmp_path))
  writer.close()
  with pytest.raises(ValueError, match='closed'):
    writer.write({'step': 1, 'loss': 1.0})


def test_writer_leaves_torch_unimported(tmp_path):
  """tensorboardX imports PyTorch when it can; the writer hides it."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  if importlib.util.find_spec('torch') is None:
    pytest.skip('torch is not installed: nothing to hide')
  code = (
      'import sys\n'
      'from experiments.tools import tensorboard\n'
      f'w = tensorboard.TensorBoardWriter({str(tmp_path)!r})\n'
      "w.write({'stage': 'a', 'step': 1, 'loss': 0.5, 'means': [0.0, 1.0]})\n"
      "assert 'torch' not in sys.modules\n"
      'import torch\n'  # Still importable afterwards.
      'print(torch.zeros(2).sum().item())\n')
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, '-c', code], cwd=repo,
                       capture_output=True, text=True, timeout=120,
                       check=True)
  assert out.stdout.strip() == '0.0'
  assert glob.glob(os.path.join(tmp_path, 'events.out.tfevents.*'))
