"""How convolutions are computed (`model.conv_impl`): the same function as
`lax.conv_general_dilated`, formulated per layer for the back end's fast kernels.

* 'xla': `lax.conv_general_dilated` for everything (XLA's own forward and gradients).
* 'fast': per layer, the formulation measured fastest on XLA's CPU back end
  (docs/BENCHMARKS.md); outputs and gradients equal 'xla' to float32 round-off:
  - a 1x1 conv without padding or groups is one dot of the (strided) input with the kernel;
  - a kxk conv with stride 1 and no groups keeps XLA's forward, and its gradients are written
    as the convolutions XLA's CPU back end runs fast (the input gradient: the flipped,
    transposed kernel over the output gradient; the kernel gradient: the transposed input with
    the output gradient as the window). XLA derives these itself for a conv outside a loop,
    but not inside the `while` loop of a scanned stage, where its own gradients are 10-30x
    slower. The kernel gradient transposes the stored input (`_materialized`), not a
    recomputation of the element-wise chain that produced it;
  - a strided or grouped kxk conv (smaller than the 7x7 stem) keeps XLA's forward; its input
    gradient is the transpose of the im2col formulation (one dot with the kernel, then the
    k*k strided slices added back) and its kernel gradient patches^T . dy (an einsum over the
    groups), instead of XLA's dilated and batch-as-feature convolutions;
  - anything else (dilation, other layouts, the stem) is `lax.conv_general_dilated`.
* 'auto': 'fast' on CPU, 'xla' elsewhere (GPU and TPU libraries choose their own algorithms);
  on CPU for Keras' flavour 'fast' in training only, its evaluation on XLA's convolutions
  (`resolve`).

Parameters, names and shapes are the same for every choice: a checkpoint trained with one
evaluates with another.
"""

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax import lax

CONV_IMPLS = ('auto', 'xla', 'fast')
DIMENSION_NUMBERS = ('NHWC', 'HWIO', 'NHWC')
STEM_KERNEL = 7          # kernels at least this large stay on XLA's conv


def resolve(impl: str, platform: Optional[str] = None, flavour: str = 'torch') -> str:
  """What a `model.conv_impl` is for a network of `flavour` on `platform` (default: JAX's default
  back end): 'xla', 'fast', or 'fast-train' ('fast' in training, XLA's convolutions in the
  forward-only passes of evaluation, prediction and export), which 'auto' is on CPU for Keras'
  flavour: there a 1x1 conv as XLA's convolution, not as a dot, ran Keras' ResNet50 eval step
  in 0.88x and 0.91x the time in two sittings, while the torchvision ResNet-50's eval step ran
  the same either way (0.996x, 1.037x; docs/BENCHMARKS.md)."""
  if impl != 'auto':
    return impl
  if (platform or jax.default_backend()) != 'cpu':
    return 'xla'
  return 'fast-train' if flavour == 'keras' else 'fast'


def conv_function(impl: str, train: bool = True) -> Optional[Callable]:
  """The `conv_general_dilated` that flax's `nn.Conv` should call for a resolved `impl` in a
  training (`train`) or evaluation pass (None: flax's default, `lax.conv_general_dilated`)."""
  return conv if impl == 'fast' or (impl == 'fast-train' and train) else None


# --- building blocks ------------------------------------------------------------------------

def _xla_conv(x, kernel, strides, pads, groups):
  return lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=DIMENSION_NUMBERS,
                                  feature_group_count=groups)


def _patches(x, kh, kw, strides, pads):
  """(N, Ho, Wo, kh*kw*C): the k*k shifted strided slices of the padded input, taps major and
  channels minor (the row order of an HWIO kernel reshaped to (kh*kw*C, O))."""
  n, h, w, c = x.shape
  (sh, sw), ((pt, pb), (pl, pr)) = strides, pads
  ho, wo = (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1
  padded = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (pt, pb, 0), (pl, pr, 0), (0, 0, 0)))
  taps = [lax.slice(padded, (0, i, j, 0), (n, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c),
                    (1, sh, sw, 1))
          for i in range(kh) for j in range(kw)]
  return taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)


def _contract(patches, kernel, groups):
  """patches (N, Ho, Wo, T*C/g*g) . kernel (kh, kw, C/g, O) -> (N, Ho, Wo, O)."""
  kh, kw, cg, cout = kernel.shape
  if groups == 1:
    return lax.dot_general(patches, kernel.reshape(kh * kw * cg, cout), (((3,), (0,)), ((), ())))
  n, ho, wo, _ = patches.shape
  grouped = patches.reshape(n, ho, wo, kh * kw, groups, cg)
  return jnp.einsum('nhwtgc,tcgo->nhwgo', grouped,
                    kernel.reshape(kh * kw, cg, groups, cout // groups)).reshape(n, ho, wo, cout)


def _kernel_grad_im2col(x, kernel_shape, strides, pads, groups, dy):
  kh, kw, cg, cout = kernel_shape
  patches = _patches(x, kh, kw, strides, pads)
  if groups == 1:
    return lax.dot_general(patches, dy, (((0, 1, 2), (0, 1, 2)), ((), ()))).reshape(kernel_shape)
  n, ho, wo, _ = patches.shape
  grouped = patches.reshape(n, ho, wo, kh * kw, groups, cg)
  return jnp.einsum('nhwtgc,nhwgo->tcgo', grouped,
                    dy.reshape(n, ho, wo, groups, cout // groups)).reshape(kernel_shape)


@jax.custom_jvp
def _materialized(x):
  """`x`, on the CPU through a `while` loop of no iterations whose trip count XLA cannot know:
  its consumers read the stored value instead of fusing (and so recomputing) its element-wise
  producers. The weight gradients' transposes otherwise recompute a unit's whole residual
  stream in transposed order. (`lax.optimization_barrier` does not reach XLA's CPU fusion
  passes.) The loop would run only for a NaN at x's first element, where the step is not finite
  anyway. Its derivative is the identity (JAX cannot reverse-differentiate a loop), so
  gradients of gradients pass through it. Other back ends get `x` as it is."""
  if jax.default_backend() != 'cpu' or x.size == 0:
    return x
  trips = jnp.isnan(x[(0,) * x.ndim]).astype(jnp.int32)
  return lax.while_loop(lambda c: c[1] < trips, lambda c: (c[0] * 2, c[1] + 1), (x, 0))[0]


@_materialized.defjvp
def _materialized_jvp(primals, tangents):
  return _materialized(primals[0]), tangents[0]


# --- stride 1, no groups: XLA's forward, gradients as canonical convolutions ----------------

@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_s1(x, kernel, pads):
  return _xla_conv(x, kernel, (1, 1), pads, 1)


def _conv_s1_fwd(x, kernel, pads):
  return _xla_conv(x, kernel, (1, 1), pads, 1), (x, kernel)


def _conv_s1_bwd(pads, residuals, dy):
  x, kernel = residuals
  x = _materialized(x)
  kh, kw = kernel.shape[:2]
  (pt, pb), (pl, pr) = pads
  flipped = jnp.transpose(kernel[::-1, ::-1], (0, 1, 3, 2))         # (kh, kw, O, I)
  dx = _xla_conv(dy, flipped, (1, 1), ((kh - 1 - pt, kh - 1 - pb), (kw - 1 - pl, kw - 1 - pr)), 1)
  # dw[a, b, i, o] = sum over n, h, w of x_pad[n, h + a, w + b, i] * dy[n, h, w, o]: a conv of
  # the input with images and channels swapped, the output gradient as its window
  dw = _xla_conv(jnp.transpose(x, (3, 1, 2, 0)), jnp.transpose(dy, (1, 2, 0, 3)), (1, 1), pads, 1)
  return dx[:, :x.shape[1], :x.shape[2]].astype(x.dtype), jnp.transpose(dw, (1, 2, 0, 3)).astype(
      kernel.dtype)


_conv_s1.defvjp(_conv_s1_fwd, _conv_s1_bwd)


# --- strided or grouped: XLA's forward, im2col gradients --------------------------------------

@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_im2col_grads(x, kernel, strides, pads, groups):
  return _xla_conv(x, kernel, strides, pads, groups)


def _im2col_fwd(x, kernel, strides, pads, groups):
  return _xla_conv(x, kernel, strides, pads, groups), (x, kernel)


def _im2col_bwd(strides, pads, groups, residuals, dy):
  x, kernel = residuals
  kh, kw = kernel.shape[:2]
  _, transpose = jax.vjp(lambda v: _contract(_patches(v, kh, kw, strides, pads), kernel, groups),
                         x)
  dx, = transpose(dy)
  return dx, _kernel_grad_im2col(x, kernel.shape, strides, pads, groups, dy).astype(kernel.dtype)


_conv_im2col_grads.defvjp(_im2col_fwd, _im2col_bwd)


# --- the function nn.Conv calls ---------------------------------------------------------------

def _is_nhwc(dimension_numbers) -> bool:
  if dimension_numbers is None:
    return False                      # lax's default is NCHW / OIHW
  ones = (1, 1, 1, 1)
  if not isinstance(dimension_numbers, lax.ConvDimensionNumbers):
    dimension_numbers = lax.conv_dimension_numbers(ones, ones, dimension_numbers)
  return dimension_numbers == lax.conv_dimension_numbers(ones, ones, DIMENSION_NUMBERS)


def conv(x, kernel, window_strides=(1, 1), padding='SAME', lhs_dilation=None, rhs_dilation=None,
         dimension_numbers=DIMENSION_NUMBERS, feature_group_count=1, batch_group_count=1,
         precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated` with the same arguments, computed with the formulation of the
  module docstring for NHWC / HWIO convolutions."""
  strides = tuple(int(s) for s in window_strides)
  groups = int(feature_group_count)
  plain = (x.ndim == 4 and _is_nhwc(dimension_numbers) and int(batch_group_count) == 1
           and all(d == 1 for d in (lhs_dilation or (1, 1)))
           and all(d == 1 for d in (rhs_dilation or (1, 1)))
           and precision is None and preferred_element_type is None)
  kh, kw = kernel.shape[:2]
  if not plain or max(kh, kw) >= STEM_KERNEL:
    return lax.conv_general_dilated(x, kernel, window_strides, padding, lhs_dilation,
                                    rhs_dilation, dimension_numbers, feature_group_count,
                                    batch_group_count, precision, preferred_element_type)
  if isinstance(padding, str):
    pads = tuple(lax.padtype_to_pads(x.shape[1:3], (kh, kw), strides, padding))
  else:
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  if (kh, kw) == (1, 1) and pads == ((0, 0), (0, 0)) and groups == 1:
    strided = x if strides == (1, 1) else x[:, ::strides[0], ::strides[1], :]
    return lax.dot_general(strided, kernel.reshape(kernel.shape[2:]), (((3,), (0,)), ((), ())))
  if strides == (1, 1) and groups == 1:
    return _conv_s1(x, kernel, pads)
  return _conv_im2col_grads(x, kernel, strides, pads, groups)
