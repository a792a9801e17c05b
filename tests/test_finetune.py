"""Fine-tuning from a pre-trained start against scratch (up_fast.finetune): the text split, the
batches, rebuilding a model from each kind of checkpoint, the curves and the verdict. Tiny models."""

import random

import pytest
import torch

from up_fast import UniversalPretrainWrapper
from up_fast.byte_model import architecture_from_state, build_model
from up_fast.finetune import (
    Comparison,
    batch_starts,
    best_step,
    compare,
    eval_steps,
    finetune_curves,
    fresh_model,
    model_state,
    rebuild,
    split_text,
    steps_to_reach,
    verdict,
)

TINY = dict(num_tokens=256, dim=16, depth=1, heads=2, seq_len=16)
TEXT = b'the cat sat on the mat; the dog sat on the log. ' * 12
CPU = torch.device('cpu')


def tiny_compare(pretrained, scratch, seeds=(0, 1), steps=6):
    train, _, held = split_text(TEXT, 0.25, TINY['seq_len'])
    return compare(
        pretrained,
        scratch,
        train,
        held,
        list(seeds),
        seq_len=TINY['seq_len'],
        device=CPU,
        steps=steps,
        batch_size=4,
        eval_every=2,
        lr=3e-3,
    )


# the text and the batches


def test_split_holds_out_the_tail_whole():
    data = bytes(range(200))
    train, validation, held = split_text(data, 0.25, 16)
    assert train + held == data and len(held) == 50 and validation == b''


@pytest.mark.parametrize('held_out', [0.0, 1.0, -0.1, 1.5])
def test_held_out_fraction_must_be_inside_0_and_1(held_out):
    with pytest.raises(ValueError, match='held_out must be a fraction'):
        split_text(TEXT, held_out, 16)


def test_too_short_a_text_says_so():
    with pytest.raises(ValueError, match=r'too short: 20 bytes split into 15 to train on and 5 held out.*window of 16'):
        split_text(bytes(20), 0.25, 16)


def test_validation_sits_between_train_and_held_out_and_train_bytes_cut_only_train():
    data = bytes(range(200))
    train, validation, held = split_text(data, 0.25, 16, validation=0.1)
    assert train + validation + held == data and len(validation) == 20 and len(held) == 50
    fewer = split_text(data, 0.25, 16, validation=0.1, train_bytes=40)
    assert fewer.train == train[:40] and fewer.validation == validation and fewer.held_out == held


@pytest.mark.parametrize(
    'settings, message',
    [
        (dict(validation=0.75), r'validation must be a fraction in \[0, 1 - held_out\) = \[0, 0.75\), got 0.75'),
        (dict(validation=-0.1), 'validation must be a fraction'),
        (dict(train_bytes=15), r'train_bytes must be between one window \(16 bytes\) and the 150 bytes.*got 15'),
        (dict(train_bytes=151), 'got 151'),
    ],
)
def test_bad_validation_or_train_bytes_say_what_is_allowed(settings, message):
    with pytest.raises(ValueError, match=message):
        split_text(bytes(200), 0.25, 16, **settings)


def test_too_short_a_validation_slice_says_so():
    with pytest.raises(ValueError, match=r'150 to train on, 10 to validate on and 40 held out.*window of 16'):
        split_text(bytes(200), 0.2, 16, validation=0.05)


def test_batches_depend_on_the_seed_alone_and_stay_in_the_text():
    starts = batch_starts(100, 16, 4, 50, seed=3)
    assert starts.shape == (50, 4)
    assert torch.equal(starts, batch_starts(100, 16, 4, 50, seed=3))
    assert not torch.equal(starts, batch_starts(100, 16, 4, 50, seed=4))
    assert starts.min() >= 0 and starts.max() == 100 - 16  # every window fits, the last one too


def test_eval_steps_hold_the_start_and_the_end():
    assert eval_steps(10, 4) == [0, 4, 8, 10]
    assert eval_steps(8, 4) == [0, 4, 8]


# rebuilding a pre-trained start


def test_architecture_is_read_from_the_shapes():
    model = build_model(TINY)
    assert architecture_from_state(model.state_dict()) == TINY
    assert architecture_from_state(build_model({**TINY, 'depth': 3, 'heads': 4, 'dim': 32}).state_dict()) == {
        **TINY,
        'depth': 3,
        'heads': 4,
        'dim': 32,
    }


def test_library_wrapper_state_dict_rebuilds_the_model(tmp_path):
    torch.manual_seed(5)
    model = build_model(TINY)
    wrapper = UniversalPretrainWrapper(model, batch_size=2, seq_len=TINY['seq_len'], rng_seed=0)
    wrapper().backward()  # a step, so the weights are not a fresh init
    path = tmp_path / 'wrapper.pt'
    torch.save(wrapper.state_dict(), path)

    state, config = model_state(torch.load(path, weights_only=True))
    assert config is None and not any(key.startswith(('model.', 'ar_wrapped.', 'data_generator.')) for key in state)
    rebuilt, architecture = rebuild(state)
    assert architecture == TINY
    for key, value in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key


def test_transformer_state_dict_and_cli_style_checkpoint_load():
    model = build_model(TINY)
    state, config = model_state(model.state_dict())
    assert config is None and rebuild(state)[1] == TINY

    state, config = model_state(dict(config={**TINY, 'seed': 3}, model=model.state_dict(), wrapper={}))
    assert config['seed'] == 3 and rebuild(state, config)[1] == TINY


def test_sizes_that_do_not_fit_name_the_weights():
    state = build_model(TINY).state_dict()
    with pytest.raises(ValueError, match=r'heads 4.*to_q.weight \(128, 16\) in the file, \(256, 16\) in the model'):
        rebuild(state, heads=4)


def test_unknown_files_are_refused_with_their_keys():
    with pytest.raises(ValueError, match='neither an up-fast checkpoint.*its keys: weight, bias'):
        model_state(torch.nn.Linear(2, 2).state_dict())
    with pytest.raises(ValueError, match='got list'):
        model_state([1, 2])


def test_a_size_the_shapes_do_not_show_must_be_given():
    state = build_model(TINY).state_dict()
    del state['pos_emb.emb.weight']
    with pytest.raises(ValueError, match=r'seq_len.*--seq-len'):
        rebuild(state)


# the curves


def test_fine_tuning_learns_the_text():
    train, _, held = split_text(TEXT, 0.25, 16)
    model = fresh_model(TINY, 0)
    curve = finetune_curves(
        model,
        train,
        {'held_out': held},
        batch_starts(len(train), 16, 8, 30, 0),
        seq_len=16,
        device=CPU,
        eval_every=10,
        lr=1e-2,
    )['held_out']
    assert len(curve) == 4
    assert curve[-1] < curve[0] - 1.0  # a repetitive text: well over a bit per byte gained in 30 steps


def test_the_fresh_model_itself_comes_out_level():
    fresh = fresh_model(TINY, 7)
    same = fresh_model(TINY, 7)  # the same init, built again
    result = tiny_compare(same, fresh)
    for seed in result.seeds:
        assert result.checkpoint[seed] == result.scratch[seed]
    assert result.checkpoint[0] != result.checkpoint[1]  # the seeds did draw other batches
    final = [result.checkpoint[s][-1] for s in result.seeds], [result.scratch[s][-1] for s in result.seeds]
    assert verdict(*final, step=6).winner == 'level'


def test_a_start_trained_on_the_text_is_ahead():
    train, _, _ = split_text(TEXT, 0.25, 16)
    ahead = fresh_model(TINY, 0)
    finetune_curves(
        ahead,
        train,
        {'held_out': train[:32]},
        batch_starts(len(train), 16, 8, 20, 99),
        seq_len=16,
        device=CPU,
        eval_every=20,
        lr=1e-2,
    )
    result = tiny_compare(ahead, fresh_model(TINY, 0))
    final = [result.checkpoint[s][-1] for s in result.seeds], [result.scratch[s][-1] for s in result.seeds]
    judged = verdict(*final, step=6)
    assert judged.winner == 'checkpoint' and judged.mean > 0
    assert 'the pre-trained start is ahead' in judged.describe()


def test_the_starts_are_not_changed_by_the_comparison():
    start = fresh_model(TINY, 1)
    before = {key: value.clone() for key, value in start.state_dict().items()}
    tiny_compare(start, fresh_model(TINY, 2), seeds=(0,), steps=2)
    assert all(torch.equal(start.state_dict()[key], value) for key, value in before.items())


# reading the curves


def test_steps_to_reach():
    assert steps_to_reach([0, 10, 20], [8.0, 6.0, 5.0], 6.0) == 10
    assert steps_to_reach([0, 10, 20], [8.0, 6.0, 5.0], 4.0) is None
    assert steps_to_reach([0, 10, 20], [8.0, 6.0, 5.0], 9.0) == 0


@pytest.mark.parametrize(
    'checkpoint, scratch, winner, mean',
    [
        ([5.0, 5.1], [5.2, 5.4], 'checkpoint', 0.25),
        ([5.2, 5.4], [5.0, 5.1], 'scratch', -0.25),
        ([5.0, 5.3], [5.2, 5.1], 'unclear', 0.0),
        ([5.0, 5.3], [5.0, 5.3], 'level', 0.0),
        ([5.0, 5.3], [5.0, 5.4], 'unclear', 0.05),  # level on one seed, ahead on the other: not ahead on every seed
        ([5.0], [5.001], 'checkpoint', 0.001),
    ],
)
def test_verdict_rules(checkpoint, scratch, winner, mean):
    judged = verdict(checkpoint, scratch, step=10)
    assert judged.winner == winner
    assert judged.mean == pytest.approx(mean)


def test_verdict_describes_the_spread_and_a_single_seed():
    text = verdict([5.0, 5.1, 5.0], [5.2, 5.4, 5.1], step=50).describe()
    assert '0.200 bits per byte lower' in text and 'step 50' in text and 'per seed 0.100 to 0.300' in text
    text = verdict([5.2, 5.4], [5.0, 5.1], step=50).describe()
    assert 'from scratch is ahead: 0.250' in text and 'per seed 0.200 to 0.300' in text
    assert 'one seed' in verdict([5.0], [5.2], step=5).describe()


def test_verdict_needs_a_figure_per_seed_from_both():
    with pytest.raises(ValueError, match='one final figure per seed'):
        verdict([5.0], [5.0, 5.1], step=1)


# early stopping: each start judged at its best validation step


def test_best_step_is_the_first_lowest_validation_figure():
    assert best_step([0, 10, 20, 30], [8.0, 4.0, 5.0, 4.0], [8.1, 4.2, 5.1, 3.9]) == (10, 4.2)
    assert best_step([0, 10], [8.0, 9.0], [8.5, 7.0]) == (0, 8.5)  # the held-out figure never picks the step
    with pytest.raises(ValueError, match='one figure per evaluation step'):
        best_step([0, 10], [8.0], [8.0, 7.0])


def test_a_start_that_overfits_early_is_judged_at_its_best_step():
    # at the last step the early overfitter is behind; at each start's best validation step it is ahead
    result = Comparison(
        steps=[0, 10, 20, 30],
        checkpoint={0: [8.0, 4.1, 5.2, 6.3], 1: [8.0, 4.0, 5.0, 6.0]},
        scratch={0: [8.0, 6.1, 5.1, 4.9], 1: [8.0, 6.0, 5.0, 4.7]},
        validation={
            'checkpoint': {0: [8.0, 4.0, 5.0, 6.0], 1: [8.0, 3.9, 4.9, 5.9]},
            'scratch': {0: [8.0, 6.0, 5.0, 4.8], 1: [8.0, 5.9, 4.9, 4.6]},
        },
    )
    assert result.best('checkpoint') == {0: (10, 4.1), 1: (10, 4.0)}
    assert result.best('scratch') == {0: (30, 4.9), 1: (30, 4.7)}
    final = verdict([6.3, 6.0], [4.9, 4.7], step=30)
    at_best = verdict(*([bits for _, bits in result.best(name).values()] for name in ('checkpoint', 'scratch')), None)
    assert final.winner == 'scratch' and at_best.winner == 'checkpoint'
    assert at_best.differences == [0.8, 0.7]
    assert "at each start's best step on the validation text" in at_best.describe()


def test_a_real_overfitting_run_is_scored_where_its_validation_was_lowest():
    rng = random.Random(0)
    words = 'the cat dog sat ran on in a mat log big small red blue and or but when then'.split()
    text = ' '.join(rng.choice(words) for _ in range(400)).encode()
    split = split_text(text, 0.2, 16, validation=0.2, train_bytes=40)  # 40 bytes to train on: it overfits
    model = dict(TINY, dim=32)
    result = compare(
        fresh_model(model, 0),
        fresh_model(model, 1),
        split.train,
        split.held_out,
        [0],
        seq_len=16,
        device=CPU,
        validation=split.validation,
        steps=60,
        batch_size=8,
        eval_every=5,
        lr=1e-2,
    )
    for name in ('checkpoint', 'scratch'):
        validation, held = result.validation[name][0], getattr(result, name)[0]
        step, bits = result.best(name)[0]
        index = result.steps.index(step)
        assert validation[index] == min(validation) and bits == held[index]
        assert step < result.steps[-1] and bits < held[-1] - 0.5  # overfitted by the end, judged before it


def test_a_comparison_without_validation_has_no_best_step():
    result = tiny_compare(fresh_model(TINY, 0), fresh_model(TINY, 1), seeds=(0,), steps=2)
    assert result.validation == {}
    with pytest.raises(ValueError, match='without a validation text'):
        result.best('checkpoint')
