"""The train step's Adam (training.SummedGradientsAdam): Keras' update, fused."""

import keras
import numpy as np
import tensorflow as tf

from tfcaption import training


def test_the_fused_update_is_keras_adams_for_dense_and_sparse_gradients():
    # To float32 rounding: the fused kernel orders its multiplies its own way.
    rng = np.random.default_rng(0)
    start = [rng.standard_normal((5, 3)).astype(np.float32),
             rng.standard_normal((7, 4)).astype(np.float32)]
    ours = [keras.Variable(w) for w in start]
    theirs = [keras.Variable(w) for w in start]
    fused = training.SummedGradientsAdam(learning_rate=0.01)
    keras_adam = keras.optimizers.Adam(learning_rate=0.01)
    for step in range(6):
        dense = tf.constant(rng.standard_normal((5, 3)), tf.float32)
        # An embedding's gradient: rows 1 and 4 (row 4 twice, summed).
        sparse = tf.IndexedSlices(tf.constant(rng.standard_normal((3, 4)), tf.float32),
                                  tf.constant([1, 4, 4]), tf.constant([7, 4]))
        fused.apply([dense, sparse], ours)
        keras_adam.apply([dense, sparse], theirs)
        for a, b in zip(ours, theirs):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6,
                                       err_msg=f"step {step}")
    for a, b in zip(fused.variables, keras_adam.variables):  # iterations, moments
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    # The update moved the weights: equal because both moved alike.
    assert np.abs(ours[0].numpy() - start[0]).max() > 1e-3


def test_dense_gradients_take_the_fused_kernel():
    weights = [keras.Variable(np.ones((5, 3), np.float32)),
               keras.Variable(np.ones((7, 4), np.float32))]
    optimizer = training.SummedGradientsAdam(learning_rate=0.01)
    optimizer.build(weights)

    @tf.function(autograph=False)
    def apply(dense, values, indices):
        optimizer.apply([dense, tf.IndexedSlices(values, indices, tf.constant([7, 4]))],
                        weights)

    graph = apply.get_concrete_function(tf.TensorSpec((5, 3)), tf.TensorSpec((2, 4)),
                                        tf.TensorSpec((2,), tf.int32)).graph
    kinds = [op.type for op in graph.get_operations()]
    assert kinds.count("ResourceApplyAdam") == 1  # the dense one; the sparse one is Keras'
