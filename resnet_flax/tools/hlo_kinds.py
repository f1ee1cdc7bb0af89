"""The kind of operation of every instruction of a compiled XLA module, for step profiles.

`classify(module_text)` reads `compiled.as_text()` (the instructions, the computations they
call, their `op_name` metadata and the stack frames' source files) and puts each instruction in
one kind of `KINDS`, from its operations, the model's module path in `op_name` (`transpose(`
marks the backward pass) and the source files:

* a convolution or dot of the model: 'dense head' under the head's modules; else 'conv forward'
  outside the backward pass, and in it 'conv weight-gradient' when its result has as many
  elements as the layer's kernel (any conv kernel when no layer is named), else 'conv
  input-gradient';
* layout instructions (copies, pads, slices, concatenations, and a fusion with a transpose:
  XLA fuses the BatchNorm and ReLU element-wise work into the transposes into a convolution's
  layout) and the other operations of a conv layer (the im2col gradients' pads and sums) count
  in the kind of the convolution or dot they feed, else of the one feeding them (flagged as
  layout); a fusion that holds several convolutions or dots counts in the kind of its first;
* RNG (threefry) and the data package's code (augmentation, the cast and normalisation):
  'augmentation + RNG';
* the model's reductions: 'BatchNorm reductions' under a norm module, else 'pooling'; the rest
  of the model: 'element-wise (BN/ReLU/residual)';
* everything else: 'outside the model' (loss, weight decay, optimizer update, metrics).
"""

import collections
import math
import re

CONV_KINDS = ('conv forward', 'conv input-gradient', 'conv weight-gradient')
OUTSIDE = 'outside the model'
KINDS = CONV_KINDS + ('dense head', 'BatchNorm reductions', 'element-wise (BN/ReLU/residual)',
                      'pooling', 'augmentation + RNG', OUTSIDE)
HEAVY = ('convolution', 'dot')
REDUCTIONS = ('reduce', 'reduce-window', 'select-and-scatter')
LAYOUT = {'copy', 'transpose', 'bitcast', 'reshape', 'reverse', 'slice', 'pad', 'concatenate',
          'broadcast', 'constant', 'parameter', 'fusion', 'get-tuple-element'}
CONTAINERS = ('while', 'call', 'conditional')
RNG = re.compile(r'threefry|_random|_bernoulli|_randint|_uniform|random_bits')
NORM = re.compile(r'(^|_)norm\d*$')
HEADER = re.compile(r'^(?:ENTRY )?%([\w.\-]+) .*\{$')
INSTRUCTION = re.compile(r'^\s+(?:ROOT )?%([\w.\-]+) = (.+?) ([a-z][\w\-]*)\((.*)$')


class Instruction:
  """One HLO instruction: name, opcode, result dims, operands, called computations, metadata."""

  def __init__(self, match, computations):
    self.name, shape, self.opcode, rest = match.groups()
    dims = re.match(r'^\w+\[([\d,]*)\]', shape)
    self.dims = tuple(int(d) for d in dims.group(1).split(',') if d) if dims else None
    self.operands = re.findall(r'%([\w.\-]+)', rest.split(')', 1)[0])
    self.calls = [c for c in re.findall(r'%([\w.\-]+)', rest) if c in computations]
    self.op_name = (re.findall(r'op_name="([^"]*)"', rest) or [''])[0]
    frame = re.search(r'stack_frame_id=(\d+)', rest)
    self.frame = int(frame.group(1)) if frame else None
    self.caller = None      # the while / call instruction whose computation holds this one


def parse_module(text: str):
  """(module name, {name: Instruction}, {computation: [Instruction]}, {stack frame id: source
  file}) of an HLO module's text."""
  module = re.match(r'HloModule ([^\s,]+)', text)
  tables, table, lines, computation = collections.defaultdict(dict), None, {}, None
  for line in text.splitlines():
    header = HEADER.match(line)
    if header:
      computation = header.group(1)
      lines[computation] = []
    elif computation is not None and line.startswith('  '):
      lines[computation].append(line)
    elif computation is None and re.match(r'^[A-Z]\w+$', line):
      table = line
    elif computation is None and table and re.match(r'^\d+ ', line):
      key, value = line.split(' ', 1)
      tables[table][int(key)] = value.strip().strip('"')
  computations = {c: [] for c in lines}
  for c, body in lines.items():
    computations[c] = [Instruction(m, computations) for m in map(INSTRUCTION.match, body) if m]
  callers = {c: i for body in computations.values() for i in body for c in i.calls}
  for c, body in computations.items():
    for instr in body:
      instr.caller = callers.get(c) if callers.get(c, instr).opcode in CONTAINERS else None
  files = {}
  for key, value in tables['StackFrames'].items():
    location = tables['FileLocations'].get(int(re.search(r'file_location_id=(\d+)',
                                                         value + ' file_location_id=0')[1]), '')
    file_id = re.search(r'file_name_id=(\d+)', location)
    files[key] = tables['FileNames'].get(int(file_id[1]), '') if file_id else ''
  instructions = {i.name: i for body in computations.values() for i in body}
  return (module[1] if module else ''), instructions, computations, files


def _body(instr, computations, seen):
  """The instruction and every instruction of the computations it calls, recursively."""
  out = [instr]
  for c in instr.calls:
    if c not in seen:
      seen.add(c)
      for inner in computations.get(c, ()):
        out += _body(inner, computations, seen)
  return out


def _kernel_sizes(instructions) -> dict:
  """{conv layer path: elements of one unit's kernel} from the module's parameters."""
  out = {}
  for i in instructions.values():
    found = re.match(r"state\.params((?:\[\\?'[^']*\\?'\])+)$", i.op_name)
    if i.opcode == 'parameter' and found and i.dims and len(i.dims) >= 4:
      parts = re.findall(r"\[\\?'([^'\\]*)\\?'\]", found[1])
      if parts[-1] == 'kernel':
        out['/'.join(parts[:-1])] = math.prod(i.dims[-4:])
  return out


def classify(module_text: str) -> dict:
  """{instruction name: (kind, counted as layout / conv-side work)} for the whole module."""
  _, instructions, computations, files = parse_module(module_text)
  kernels, memo, kinds, pending = _kernel_sizes(instructions), {}, {}, set()
  train = any('transpose(' in i.op_name for i in instructions.values())   # a backward pass

  def layer(op_name):   # the longest conv layer path whose parts appear in order in op_name
    if op_name not in memo:
      found = []
      for path in kernels:
        segments = iter(op_name.split('/'))
        if all(part in segments for part in path.split('/')):
          found.append(path)
      memo[op_name] = max(found, key=len, default=None)
    return memo[op_name]

  for name, instr in instructions.items():
    body, caller = _body(instr, computations, set()), instr
    names = [i.op_name for i in body if i.op_name]
    while not names and caller.caller is not None:   # inside a loop: the loop's names
      caller = caller.caller
      names = [caller.op_name] if caller.op_name else []
    heavy = next((i for i in body if i.opcode in HEAVY), None)
    in_model = any('ResNet' in n for n in names)
    if heavy is not None and (in_model or not names):
      op_name = heavy.op_name or instr.op_name
      if any(s == 'head' or s.startswith('head_hidden') for s in op_name.split('/')):
        kinds[name] = 'dense head'
      elif not ('transpose(' in op_name or (train and not op_name)):
        kinds[name] = 'conv forward'
      else:
        path = layer(op_name)
        sizes = {kernels[path]} if path else set(kernels.values())
        weight = heavy.dims is not None and math.prod(heavy.dims) in sizes
        kinds[name] = 'conv weight-gradient' if weight else 'conv input-gradient'
      continue
    reductions = [i for i in body if i.opcode in REDUCTIONS]
    conv_side = in_model and all(layer(n) for n in names if 'ResNet' in n)
    if any(RNG.search(n) for n in names) or any(
        'resnet_flax/data/' in files.get(i.frame, '') for i in body):
      kind = 'augmentation + RNG'
    elif in_model and reductions:
      kind = 'BatchNorm reductions' if any(NORM.search(s) for i in reductions for s in (
          i.op_name or instr.op_name).split('/')) else 'pooling'
    elif conv_side:
      kind = 'conv input-gradient' if any('transpose(' in n for n in names) else 'conv forward'
    else:
      kind = 'element-wise (BN/ReLU/residual)' if in_model else OUTSIDE
    kinds[name] = kind
    opcodes = {i.opcode for i in body}
    layout = (opcodes <= LAYOUT or ('transpose' in opcodes and not reductions)) and (
        instr.opcode != 'parameter')
    if layout or conv_side:
      pending.add(name)
  return _attribute(kinds, pending, instructions)


def _attribute(kinds: dict, pending: set, instructions) -> dict:
  """`pending` instructions in the kind of the convolution or dot they feed, else of the one
  feeding them, through other pending instructions; the others keep their own kind."""
  users = collections.defaultdict(list)
  for instr in instructions.values():
    for operand in instr.operands:
      users[operand].append(instr.name)
  operands = {n: i.operands for n, i in instructions.items()}
  out = {n: (k, False) for n, k in kinds.items()}
  for name in pending:
    for edges in (users, operands):
      found, frontier, seen = None, [name], {name}
      while frontier and found is None:
        for nxt in edges.get(frontier.pop(), ()):
          if nxt not in seen:
            seen.add(nxt)
            if nxt in pending:
              frontier.append(nxt)
            elif kinds.get(nxt) in CONV_KINDS:
              found = kinds[nxt]
              break
      if found:
        out[name] = (found, True)
        break
  return out
