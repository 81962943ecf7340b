"""Data layer. Importing it quietens one message MONAI 1.6 prints wherever pydicom is installed (highdicom brings
it) and no GPU JPEG decoder is: every ``LoadImage`` builds each reader it knows, including the nvImageCodec DICOM
reader, which then warns (once per data-loader worker) that it cannot register. We read DICOM with SimpleITK."""

import logging
import warnings

warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register")
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
