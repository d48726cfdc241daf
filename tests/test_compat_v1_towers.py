"""The multi-GPU tutorials' two-tower program on a machine without GPUs: towers placed
with tf.device('/gpu:%d' % i), variables shared through variable_scope reuse, gradients
averaged across towers; allow_soft_placement puts everything on the CPU (and the
placement log says so), as TF does."""
import numpy as np
import pytest

import flowjit as fj
import flowjit.compat.v1 as tf


def average_gradients(tower_grads):
    average_grads = []
    for grad_and_vars in zip(*tower_grads):
        grads = [tf.expand_dims(g, 0) for g, _ in grad_and_vars]
        grad = tf.reduce_mean(tf.concat(grads, 0), 0)
        average_grads.append((grad, grad_and_vars[0][1]))
    return average_grads


def conv_net(x, reuse, is_training):
    with tf.variable_scope("ConvNet", reuse=reuse):
        x = tf.layers.conv2d(x, 16, 3, activation=tf.nn.relu, padding="same")
        x = tf.layers.max_pooling2d(x, 2, 2)
        x = tf.layers.conv2d(x, 32, 3, activation=tf.nn.relu, padding="same")
        x = tf.layers.max_pooling2d(x, 2, 2)
        x = tf.layers.flatten(x)
        x = tf.layers.dense(x, 64, activation=tf.nn.relu)
        x = tf.layers.dropout(x, rate=0.25, training=is_training)
        return tf.layers.dense(x, 10)


def test_two_tower_cnn_with_soft_placement(capfd):
    tf.reset_default_graph()
    tf.set_random_seed(0)
    data = fj.data.load_digits(reshape=False)
    num_gpus, batch_size = 2, 64
    X = tf.placeholder(tf.float32, [None, 8, 8, 1])
    Y = tf.placeholder(tf.float32, [None, 10])
    opt = tf.train.AdamOptimizer(0.005)
    tower_grads, reuse_vars = [], False
    for i in range(num_gpus):
        with tf.device('/gpu:%d' % i):
            _x = X[i * batch_size:(i + 1) * batch_size]
            _y = Y[i * batch_size:(i + 1) * batch_size]
            logits_train = conv_net(_x, reuse_vars, True)
            logits_test = conv_net(_x, True, False)
            loss_op = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(logits=logits_train, labels=_y))
            grads = opt.compute_gradients(loss_op)
            if i == 0:
                correct_pred = tf.equal(tf.argmax(logits_test, 1), tf.argmax(_y, 1))
                accuracy = tf.reduce_mean(tf.cast(correct_pred, tf.float32))
            reuse_vars = True
            tower_grads.append(grads)
    train_op = opt.apply_gradients(average_gradients(tower_grads))
    assert len(tf.trainable_variables()) == 8           # one set of weights, shared by the towers

    config = tf.ConfigProto(allow_soft_placement=True, log_device_placement=True)
    with tf.Session(config=config) as sess:
        sess.run(tf.global_variables_initializer())
        for step in range(150):
            bx, by = data.train.next_batch(batch_size * num_gpus)
            sess.run(train_op, feed_dict={X: bx, Y: by})
        acc = np.mean([sess.run(accuracy, {X: data.test.images[i:i + batch_size],
                                           Y: data.test.labels[i:i + batch_size]})
                       for i in range(0, len(data.test.images) - batch_size + 1, batch_size)])
    assert acc > 0.85
    log = capfd.readouterr()
    text = log.out + log.err
    assert "device:CPU:0" in text and "GPU:1" not in text.split("device:")[-1]


def test_hard_placement_on_a_missing_gpu_fails_clearly():
    tf.reset_default_graph()
    with tf.device('/gpu:1'):
        a = tf.constant([1.0, 2.0])
        b = a * 2.0
    with tf.Session(config=tf.ConfigProto(allow_soft_placement=False)) as sess:
        with pytest.raises(Exception, match=r"(?i)gpu"):
            sess.run(b)
