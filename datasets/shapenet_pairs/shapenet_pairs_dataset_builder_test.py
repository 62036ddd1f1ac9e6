"""tfds.testing check of the shapenet_pairs builder on dummy_data (a tiny fake ShapeNetCore.v2 folder)."""

import numpy as np
import tensorflow_datasets as tfds

from keypointnet_datasets.shapenet_pairs import shapenet_pairs_dataset_builder


class ShapenetPairsTest(tfds.testing.DatasetBuilderTestCase):
  """Builds cars_small from dummy_data (3 / 2 / 2 models listed in dummy_data/splits, 8 pairs each)."""
  DATASET_CLASS = shapenet_pairs_dataset_builder.Builder
  BUILDER_CONFIG_NAMES_TO_TEST = ["cars_small"]
  SPLITS = {"train": 24, "validation": 16, "test": 16}
  SKIP_CHECKSUMS = True

  def test_content(self):
    builder = self.DATASET_CLASS(data_dir=self.tmp_dir, config="cars_small")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=self.dummy_data))
    ids = {}
    for split in ("train", "validation", "test"):
      examples = list(tfds.as_numpy(builder.as_dataset(split=split)))
      ids[split] = {e["model_id"] for e in examples}
      for e in examples:
        self.assertEqual(e["img0"].shape, (64, 64, 4))
        self.assertGreater(int((e["img0"][..., 3] > 0).sum()), 20)  # the object is in view
        np.testing.assert_allclose(e["mv0"] @ e["mvi0"], np.eye(4), atol=1e-4)
        np.testing.assert_allclose(e["mv1"] @ e["mvi1"], np.eye(4), atol=1e-4)
        self.assertEqual(e["keypoints"].shape, (0, 3))  # ShapeNet has no ground-truth keypoints
    self.assertEqual(ids["train"], {b"dummy_train_a", b"dummy_train_b", b"dummy_train_c"})
    self.assertFalse(ids["train"] & ids["validation"] or ids["train"] & ids["test"] or
                     ids["validation"] & ids["test"])


if __name__ == "__main__":
  tfds.testing.test_main()
