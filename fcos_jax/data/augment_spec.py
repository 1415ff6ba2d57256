"""The `data.augment` syntax: a comma-separated list of ops, each `Name` or `Name(param=value, ...)`, applied in
that order, e.g. 'RandomDistort,RandomExpand(ratio=2),RandomCrop,VerticalFlip,Rotate90'. Values are Python literals
(numbers, lists, True/False, None). Parsed without TensorFlow, so that config validation stays light; the ops
themselves are in `fcos_jax.data.augment`.
"""

import ast
import difflib
import numbers

from fcos_jax.errors import ConfigError

# Each op's parameters and their defaults: PaddleDetection's (ppdet/data/transform/operators.py) where it has the op.
DEFAULTS = {
    # Colour: each of brightness (x + d), contrast (x * d), saturation (blend with gray by d) and hue (rotation in
    # YIQ by d * pi) is [low, high, prob]: skipped with probability prob, else d ~ U(low, high). random_apply: the
    # first `count` of them in a random order; otherwise brightness, contrast, saturation, hue with contrast first or
    # last at random.
    'RandomDistort': dict(hue=(-18, 18, 0.5), saturation=(0.5, 1.5, 0.5), contrast=(0.5, 1.5, 0.5),
                          brightness=(0.5, 1.5, 0.5), random_apply=True, count=4),
    # With probability 1 - prob, the image on a canvas r ~ U(1, ratio) times its size, at a random place.
    'RandomExpand': dict(ratio=4.0, prob=0.5, fill_value=(127.5, 127.5, 127.5)),
    # SSD's crop: the thresholds (and 'no crop') in a random order; for each, up to num_attempts crops of relative
    # size `scaling` and aspect `aspect_ratio` until one whose IoU with some box reaches the threshold keeps a box
    # centre. Kept: the boxes whose centre lies in the crop, clipped to it.
    'RandomCrop': dict(aspect_ratio=(0.5, 2.0), thresholds=(0.0, 0.1, 0.3, 0.5, 0.7, 0.9), scaling=(0.3, 1.0),
                       num_attempts=50, allow_no_crop=True, cover_all_box=False),
    'VerticalFlip': dict(prob=0.5),  # Upside down with probability prob.
    'Rotate90': dict(),  # Rotated counter-clockwise by 0, 90, 180 or 270 degrees, each as likely.
}
EXAMPLE = 'RandomDistort,RandomExpand(ratio=2),RandomCrop,VerticalFlip,Rotate90'


def _numbers(value, n=None):
  return (isinstance(value, (tuple, list)) and (n is None or len(value) == n)
          and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value))


def _probability(value):
  return isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 <= value <= 1


def _param_problems(op, p):
  """What is wrong with the parameters `p` (defaults filled in) of `op`: a list of messages."""
  problems = []
  if op == 'RandomDistort':
    for name in ('brightness', 'contrast', 'saturation', 'hue'):
      v = p[name]
      if not _numbers(v, 3) or v[0] > v[1] or not _probability(v[2]):
        problems.append(f'{name} must be [low, high, prob], low <= high, prob in [0, 1]')
    if not isinstance(p['random_apply'], bool):
      problems.append('random_apply must be True or False')
    if not (isinstance(p['count'], int) and not isinstance(p['count'], bool) and 0 <= p['count'] <= 4):
      problems.append('count must be an integer in [0, 4]')
  elif op == 'RandomExpand':
    if not (isinstance(p['ratio'], numbers.Real) and p['ratio'] > 1.01):
      problems.append('ratio must be a number > 1.01')
    if not _probability(p['prob']):
      problems.append('prob must be in [0, 1]')
    fill = p['fill_value']
    fill = (fill,) * 3 if isinstance(fill, numbers.Real) and not isinstance(fill, bool) else fill
    if not (_numbers(fill, 3) and all(0 <= v <= 255 for v in fill)):
      problems.append('fill_value must be a number or 3 numbers (RGB) in [0, 255]')
  elif op == 'RandomCrop':
    if p['aspect_ratio'] is not None and (not _numbers(p['aspect_ratio'], 2) or not 0 < p['aspect_ratio'][0]
                                          <= p['aspect_ratio'][1]):
      problems.append('aspect_ratio must be [min, max], 0 < min <= max, or None')
    if not _numbers(p['thresholds']) or not (p['thresholds'] or p['allow_no_crop'] is True):
      problems.append('thresholds must be a list of IoU thresholds (not empty unless allow_no_crop=True)')
    scaling = p['scaling']
    if not (_numbers(scaling, 2) and 0 < scaling[0] <= scaling[1] <= 1):
      problems.append('scaling must be [min, max], 0 < min <= max <= 1')
    if not (isinstance(p['num_attempts'], int) and not isinstance(p['num_attempts'], bool) and p['num_attempts'] > 0):
      problems.append('num_attempts must be a positive integer')
    for name in ('allow_no_crop', 'cover_all_box'):
      if not isinstance(p[name], bool):
        problems.append(f'{name} must be True or False')
  elif op == 'VerticalFlip':
    if not _probability(p['prob']):
      problems.append('prob must be in [0, 1]')
  return problems


def _op(node, spec):
  """(name, params with defaults) of one list element `node` of the parsed spec."""
  call = node if isinstance(node, ast.Call) else None
  name_node = call.func if call else node
  if not isinstance(name_node, ast.Name):
    raise ConfigError(f'data.augment={spec!r}: {ast.unparse(node)!r} is not an op (write Name or '
                      f'Name(param=value), e.g. {EXAMPLE!r})')
  name = name_node.id
  if name not in DEFAULTS:
    close = difflib.get_close_matches(name, DEFAULTS, n=1)
    hint = f'; did you mean {close[0]}?' if close else ''
    raise ConfigError(f'data.augment={spec!r}: unknown op {name!r}{hint} (ops: {", ".join(DEFAULTS)})')
  params = dict(DEFAULTS[name])
  if call is None:
    return name, params
  if call.args:
    example = f', e.g. {name}({next(iter(params))}=...)' if params else ' (it has none)'
    raise ConfigError(f'data.augment={spec!r}: {name} takes its parameters by name{example}')
  for keyword in call.keywords:
    if keyword.arg not in params:
      known = ', '.join(params) or 'none'
      raise ConfigError(f'data.augment={spec!r}: {name} has no parameter {keyword.arg!r} (its parameters: {known})')
    try:
      value = ast.literal_eval(keyword.value)
    except ValueError as e:
      raise ConfigError(f'data.augment={spec!r}: {name}({keyword.arg}=...) must be a literal (a number, a list, '
                        f'True, False or None)') from e
    params[keyword.arg] = tuple(value) if isinstance(value, list) else value
  problems = _param_problems(name, params)
  if problems:
    raise ConfigError(f'data.augment={spec!r}: {name}: {"; ".join(problems)}')
  return name, params


def parse(spec):
  """`data.augment` -> tuple of (op name, {param: value}) with PaddleDetection's defaults filled in; '' -> ().

  Raises ConfigError (one line, naming the op and parameter) on anything else.
  """
  if not spec.strip():
    return ()
  try:
    tree = ast.parse(f'[{spec}]', mode='eval').body
  except SyntaxError as e:
    raise ConfigError(f'data.augment={spec!r} is not a comma-separated list of ops such as {EXAMPLE!r} '
                      f'({e.msg})') from e
  if not isinstance(tree, ast.List):
    raise ConfigError(f'data.augment={spec!r} is not a comma-separated list of ops such as {EXAMPLE!r}')
  return tuple(_op(node, spec) for node in tree.elts)
