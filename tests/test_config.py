"""config: presets, method names, validation, schedules, serialisation and the resume rule."""

import dataclasses
import json

import pytest

from keypointnet_tf import config as config_lib
from keypointnet_tf import runs


def test_method_names_never_call_a_variant_keypointnet():
  preset = config_lib.cpu_anchor_preset("chairs")
  assert preset.loss.weights.anchor > 0
  assert config_lib.method_name(preset) == "KeypointNet + axis-anchor warm-up"
  label_free = dataclasses.replace(preset, loss=config_lib.LossConfig())
  assert config_lib.method_name(label_free) == "KeypointNet"
  assert config_lib.method_name(config_lib.TrainConfig()) == "KeypointNet"
  assert config_lib.method_name(dataclasses.replace(preset, supervised=True)) == "supervised baseline"
  variant = dataclasses.replace(label_free, loss=config_lib.LossConfig(
      separation_delta=0.2, weights=config_lib.LossWeights(pose=1.0)), orientation_from="runs/x")
  assert config_lib.method_name(variant) == ("KeypointNet (variant: pose 1, separation_delta 0.2) "
                                             "with pretrained O-Net")
  warm_up = dataclasses.replace(label_free, loss=config_lib.LossConfig(silhouette_warmup_steps=4000))
  assert config_lib.method_name(warm_up) == "KeypointNet (variant: silhouette_warmup_steps 4000)"


def test_presets_by_name():
  cpu, label = config_lib.preset("cpu", "cars", gpu_visible=False)
  assert label == "CPU preset" and config_lib.method_name(cpu) == "KeypointNet"  # label-free: the paper's losses
  assert cpu.loss == config_lib.LossConfig() and cpu.anchor_steps == 0 and not cpu.supervised
  assert (cpu.dataset_config, cpu.batch_size, cpu.steps) == ("cars_small_x10_gen2", 32, 8000)
  anchored, label = config_lib.preset("cpu_anchor", "cars", gpu_visible=False)
  assert label == "CPU preset + axis-anchor warm-up"
  assert config_lib.method_name(anchored) == "KeypointNet + axis-anchor warm-up"
  # The anchor is the only difference: same data, size, budget, optimiser and flag schedule.
  assert dataclasses.replace(anchored, loss=cpu.loss, anchor_steps=0) == cpu
  assert config_lib.preset("auto", "planes", gpu_visible=False) == (config_lib.cpu_preset("planes"), "CPU preset")
  assert config_lib.preset("auto", "planes", gpu_visible=True) == (
      config_lib.TrainConfig(category="planes", dataset_config="planes"), "paper recipe")
  assert config_lib.preset("paper", "cars", gpu_visible=False)[0].dataset_config == "cars_gen2"
  assert config_lib.preset("cpu", "chairs", gpu_visible=True)[0] == config_lib.cpu_preset("chairs")
  with pytest.raises(ValueError, match="preset must be one of"):
    config_lib.preset("fast", "planes", gpu_visible=False)


def test_the_lateral_preset_adds_the_lateral_anchor_over_a_silhouette_warm_up():
  planes, label = config_lib.preset("cpu_lateral", "planes", gpu_visible=False)
  assert label == "CPU preset + lateral anchor"
  cpu = config_lib.cpu_preset("planes")
  # The anchor is the only difference on planes (their recipe has the warm-up it decays over).
  assert planes.loss.extra_terms == (("lateral_anchor", 10.0),)
  assert dataclasses.replace(planes, loss=dataclasses.replace(planes.loss, extra_terms=())) == cpu
  assert config_lib.method_name(planes) == ("KeypointNet (variant: silhouette_warmup_steps 4000, "
                                            "lateral_anchor 10)")
  # Cars have no warm-up in their recipe: they get one, at their recipe's length.
  cars = config_lib.cpu_lateral_preset("cars")
  assert (cars.steps, cars.loss.silhouette_warmup_steps, cars.loss.extra_terms) == (
      8000, 4000, (("lateral_anchor", 10.0),))
  assert config_lib.resolve(cars).loss.extra_terms == cars.loss.extra_terms
  # (Without a warm-up the anchor would never act: losses.check_terms refuses it, tests/test_training.py.)
  # A shorter run scales the warm-up with the flag schedule, so the anchor still decays before the end.
  short = config_lib.fit_schedules(cars, 2000)
  assert (short.loss.silhouette_warmup_steps, short.anneal_end) == (1000, 1500)


def test_the_planes_preset_is_the_recipe_studys_named_variant():
  # Planes: 12,000 steps with the silhouette warm-up over the first 4,000, reported under the variant's name; the
  # rest is the other categories' preset, and --silhouette_warmup_steps=0 gives back the paper's losses.
  planes, chairs = config_lib.cpu_preset("planes"), config_lib.cpu_preset("chairs")
  assert (planes.steps, planes.loss.silhouette_warmup_steps, planes.dataset_config) == (12000, 4000,
                                                                                         "planes_small_x10")
  assert config_lib.method_name(planes) == "KeypointNet (variant: silhouette_warmup_steps 4000)"
  assert dataclasses.replace(planes, category="chairs", dataset_config="chairs_small_x10", steps=8000,
                             loss=config_lib.LossConfig()) == chairs
  assert (chairs.steps, chairs.loss.silhouette_warmup_steps) == (8000, 0)
  paper = dataclasses.replace(planes, loss=dataclasses.replace(planes.loss, silhouette_warmup_steps=0))
  assert config_lib.method_name(paper) == "KeypointNet"
  # The anchored preset adds the anchor and nothing else.
  anchored = config_lib.cpu_anchor_preset("planes")
  assert dataclasses.replace(anchored, loss=planes.loss, anchor_steps=0) == planes
  assert config_lib.method_name(anchored) == ("KeypointNet + axis-anchor warm-up (variant: "
                                              "silhouette_warmup_steps 4000)")
  # Tables place a variant in its method's row.
  assert [config_lib.method_base(config_lib.method_name(c)) for c in (planes, anchored, chairs)] == [
      "KeypointNet", "KeypointNet + axis-anchor warm-up", "KeypointNet"]
  assert config_lib.method_base("KeypointNet (variant: pose 1, separation_delta 0.2) with pretrained O-Net") == (
      "KeypointNet with pretrained O-Net")


def test_categories_of_data_sets():
  assert [config_lib.category_of(n) for n in ("planes", "cars_small", "chairs_small_x10", "mugs", "planes2")] == [
      "planes", "cars", "chairs", "mugs", "planes2"]
  for good in ("mugs", "my-mugs_2"):
    config_lib.check_category(good)
  for bad in ("", "Mugs", "../mugs", "mugs/x", None):
    with pytest.raises(ValueError, match="category must be one of"):
      config_lib.check_category(bad)
  assert config_lib.cpu_preset("mugs").dataset_config == "mugs"  # the user's data set of that name
  assert config_lib.cpu_preset("cars").dataset_config == "cars_small_x10_gen2"  # cars: generator 2
  assert config_lib.category_of("cars_small_x10_gen2") == "cars"


def test_schedules_fit_the_run_length():
  preset = config_lib.cpu_anchor_preset("chairs")  # 8,000 steps: anneal 3k-6k, anchor until 4k
  short = config_lib.fit_schedules(preset, 2000)
  assert (short.steps, short.anneal_start, short.anneal_end, short.anchor_steps) == (2000, 750, 1500, 1000)
  longer = config_lib.fit_schedules(preset, 20000)  # already within: unchanged
  assert (longer.anneal_start, longer.anneal_end, longer.anchor_steps) == (3000, 6000, 4000)
  with pytest.raises(ValueError, match=r"anneal_end=6000 ends after the last step \(2000\)"):
    config_lib.fit_schedules(preset, 2000, explicit=("anneal_start", "anneal_end"))
  kept = config_lib.fit_schedules(dataclasses.replace(preset, anneal_start=100, anneal_end=200), 2000,
                                  explicit=("anneal_start", "anneal_end"))
  assert (kept.anneal_start, kept.anneal_end, kept.anchor_steps) == (100, 200, 1000)
  supervised = config_lib.fit_schedules(dataclasses.replace(preset, supervised=True), 2000)
  assert supervised.anneal_end == 6000  # the supervised baseline uses the ground-truth flag throughout


def test_silhouette_warmup_is_a_schedule_checked_against_the_steps():
  warm = dataclasses.replace(config_lib.cpu_preset("chairs"), loss=config_lib.LossConfig(silhouette_warmup_steps=4000))
  short = config_lib.fit_schedules(warm, 2000)  # scaled with the others: it ends within the run
  assert (short.loss.silhouette_warmup_steps, short.anneal_start, short.anneal_end) == (1000, 750, 1500)
  with pytest.raises(ValueError, match=r"silhouette_warmup_steps=4000 ends after the last step \(2000\)"):
    config_lib.fit_schedules(warm, 2000, explicit=("silhouette_warmup_steps",))
  assert config_lib.fit_schedules(config_lib.cpu_preset("chairs"), 2000).loss.silhouette_warmup_steps == 0
  # The planes preset's own warm-up (4,000 of 12,000 steps) scales with its other schedules.
  planes = config_lib.fit_schedules(config_lib.cpu_preset("planes"), 3000)
  assert (planes.loss.silhouette_warmup_steps, planes.anneal_start, planes.anneal_end) == (1000, 750, 1500)


def test_a_resumed_run_keeps_its_schedules_unless_set():
  preset = config_lib.cpu_preset("chairs")
  saved = config_lib.fit_schedules(preset, 2000)  # started with --steps=2000: anneal 750-1500
  resumed = config_lib.plan_run(preset, 4000, saved=saved)  # then --steps=4000
  assert (resumed.steps, resumed.anneal_start, resumed.anneal_end) == (4000, 750, 1500)
  explicit = config_lib.plan_run(dataclasses.replace(preset, anneal_end=3000), 4000, ("anneal_end",), saved)
  assert (explicit.anneal_start, explicit.anneal_end) == (750, 3000)


def test_anchor_added_to_a_preset_without_one_decays_at_half_the_run():
  anchored = config_lib.with_anchor(config_lib.cpu_preset("chairs"), 0.5)
  assert anchored.loss.weights.anchor == 0.5 and anchored.anchor_steps == 4000
  assert config_lib.with_anchor(config_lib.cpu_anchor_preset("chairs")).anchor_steps == 4000  # its own schedule


def test_resolve_fills_defaults_and_refuses_bad_values():
  resolved = config_lib.resolve(config_lib.TrainConfig(category="cars"))
  assert (resolved.model_dir, resolved.dataset_config) == ("runs/cars", "cars")
  for field, value in (("steps", 0), ("batch_size", -1), ("learning_rate", 0.0), ("lr_decay_fraction", 2.0)):
    with pytest.raises(ValueError, match=field):
      config_lib.resolve(dataclasses.replace(config_lib.TrainConfig(), **{field: value}))


def test_serialisation_round_trip_and_the_resume_rule(tmp_path):
  config = dataclasses.replace(config_lib.cpu_preset("chairs"), lr_decay_fraction=0.25,
                               loss=config_lib.LossConfig(extra_terms=(("triangulation", 1.0),)))
  stored = json.loads(json.dumps(config_lib.to_dict(config)))  # what config.json holds
  assert config_lib.from_dict(stored) == config
  # What a resumption may change (steps, logging, where it lives, how it is computed) and what it may not.
  assert not config_lib.resume_conflicts(stored, dataclasses.replace(
      config, steps=20000, model_dir="elsewhere", model=dataclasses.replace(config.model, dilated_conv="keras")))
  assert config_lib.resume_conflicts(stored, dataclasses.replace(config, learning_rate=0.01)) == {
      "learning_rate": (0.001, 0.01)}
  assert config_lib.same_training(stored, dataclasses.replace(config, log_every=7))
  assert not config_lib.same_training(stored, dataclasses.replace(config, steps=9000))
  assert config_lib.same_training(stored, dataclasses.replace(config, steps=9000), compare_steps=False)
  # A shipped model's config.json, written before several fields existed, still loads.
  assert runs.load_config(runs.pretrained_dir("planes")).category == "planes"


def test_the_paper_camera_is_written_down_once():
  # The renderer cannot import geometry (TensorFlow), so it repeats the field of view; they must agree.
  from keypointnet_datasets.shapenet_pairs import rendering  # pylint: disable=g-import-not-at-top
  from keypointnet_datasets.shapenet_pairs import shapenet_pairs_dataset_builder  # pylint: disable=g-import-not-at-top
  from keypointnet_tf import geometry  # pylint: disable=g-import-not-at-top
  assert rendering.PAPER_FOV_DEGREES == geometry.PAPER_FOV_DEGREES
  default = shapenet_pairs_dataset_builder.ShapenetPairsConfig(name="x", category="planes")
  assert (default.fov_degrees, default.camera_distance) == (geometry.PAPER_FOV_DEGREES, geometry.PAPER_CAMERA_DISTANCE)
  assert config_lib.ModelConfig().camera_distance == geometry.PAPER_CAMERA_DISTANCE
  assert config_lib.focal_of(config_lib.TrainConfig()) == pytest.approx(22.904, abs=1e-3)  # runs without a record


def test_generator_2_cars_have_named_configs_with_generator_1_splits():
  # The cars presets' data: generator 2 under its own names, the same objects' indices, views and splits as the
  # generator-1 configs (which keep their names for the earlier results).
  from keypointnet_datasets.shapenet_pairs import shapenet_pairs_dataset_builder as builder_lib  # pylint: disable=g-import-not-at-top
  configs = {c.name: c for c in builder_lib.Builder.BUILDER_CONFIGS}
  for name in ("cars", "cars_small", "cars_small_x10"):
    gen1, gen2 = configs[name], configs[name + "_gen2"]
    assert (gen1.generator, gen2.generator) == (1, 2)
    assert dataclasses.replace(gen2, name=gen1.name, generator=1, description=gen1.description) == gen1
  assert not [n for n in configs if n.endswith("_gen2") and not n.startswith("cars")]
  # What the tools render a model's turntable and held-out objects with: its data set's generator.
  assert [builder_lib.generator_of(n) for n in ("cars_small_x10_gen2", "cars_small_x10", "planes", "my_meshes")] \
      == [2, 1, 1, 1]
  assert builder_lib.generator_of(config_lib.cpu_preset("cars").dataset_config) == 2
