"""What a file given as a job's input may be, in words: the one list every refusal
quotes (the service's upload, `kd submit`, `kdcore validate`, the checkpoint reader)."""

DATASET_FORMATS = (
    "an imagefolder archive (.zip or .tar of <class>/<image>), webdataset shards "
    "(.tar of <key>.jpg + <key>.cls), an .npz of arrays x and y, or text for language "
    "models (.txt, .jsonl)"
)
CHECKPOINT_FORMATS = (
    "safetensors, a torch.save'd state dict (.pt/.pth, read weights-only), an ONNX graph "
    "(a teacher with no arch), or a zipped Hugging Face model folder (config.json + "
    "model.safetensors), such as a job's student_hf.zip"
)
