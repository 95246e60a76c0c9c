"""ONNX operators that TensorRT's ONNX parser supports (onnx-tensorrt ``docs/operators.md``, TensorRT 10.x).

Every node of an exported graph, and of the function body of ``MediatorAttention``, must use one of these,
so that the same file builds into a TensorRT engine. The list is deliberately the documented one, not what
happens to appear in today's exports: a new op in the exporter's output fails the test that checks it.
"""

TENSORRT_ONNX_OPS: frozenset[str] = frozenset(
    """
Abs Acos Acosh Add AffineGrid And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool
BatchNormalization BitShift BlackmanWindow Cast CastLike Ceil Celu Clip Compress Concat ConcatFromSequence
Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DFT DeformConv DepthToSpace DequantizeLinear Det
Div Dropout DynamicQuantizeLinear Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor GRU Gather
GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual
GridSample GroupNormalization HammingWindow HannWindow HardSigmoid HardSwish Hardmax Identity If ImageScaler
InstanceNormalization IsInf IsNaN LRN LSTM LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop
LpNormalization LpPool MatMul MatMulInteger Max MaxPool MaxRoiPool MaxUnpool Mean MeanVarianceNormalization
Min Mish Mod Mul Multinomial Neg NonMaxSuppression NonZero Not OneHot Or PRelu Pad ParametricSoftplus Pow
QLinearConv QLinearMatMul QuantizeLinear RMSNormalization RNN RandomNormal RandomNormalLike RandomUniform
RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean
ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RoiAlign
RotaryEmbedding Round STFT ScaledTanh Scan Scatter ScatterElements ScatterND Selu SequenceAt
SequenceConstruct SequenceEmpty SequenceErase SequenceInsert SequenceLength Shape Shrink Sigmoid Sign Sin
Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split SplitToSequence Sqrt Squeeze Sub Sum Tan Tanh
ThresholdedRelu Tile TopK Transpose Trilu Unique Unsqueeze Upsample Where Xor
""".split()
)

#: Highest opset the TensorRT 10.15 parser reads.
TENSORRT_MAX_OPSET = 24


def unsupported_ops(op_types: set[str]) -> set[str]:
    """The subset of default-domain ``op_types`` that TensorRT's parser does not support."""
    return set(op_types) - TENSORRT_ONNX_OPS
