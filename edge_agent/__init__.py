"""Edge agent of linewatch: runs beside the line with the TFLite interpreter, numpy and OpenCV only."""
