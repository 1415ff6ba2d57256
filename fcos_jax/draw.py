"""Pictures of detections: boxes with class name and score, legible on images from a few pixels to many megapixels.

Small images are enlarged (long side `MIN_LONG_SIDE`) before drawing, so labels stay readable; line width and font
size grow with the image. One colour per class.
"""

import numpy as np
from PIL import Image, ImageDraw, ImageFont

MIN_LONG_SIDE = 640  # Pictures are drawn at least this large (long side, pixels).
PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
           (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
           (0, 0, 128), (128, 128, 128))


def draw(image, boxes, scores, classes, class_names):
  """`image` uint8 RGB [h, w, 3] with each detection drawn -> PIL.Image (enlarged if small).

  `boxes` [n, 4] xyxy in `image` pixels, `scores` [n], `classes` [n] int labels, `class_names` [n] str.
  """
  picture = Image.fromarray(np.asarray(image, np.uint8))
  zoom = max(1.0, MIN_LONG_SIDE / max(picture.size))
  if zoom > 1:
    picture = picture.resize((round(picture.width * zoom), round(picture.height * zoom)), Image.BILINEAR)
  long_side = max(picture.size)
  width = max(2, round(long_side / 400))
  font = ImageFont.load_default(size=max(12, round(long_side / 60)))
  canvas = ImageDraw.Draw(picture)
  order = np.argsort(np.asarray(scores))  # Highest scores drawn last, on top.
  for i in order:
    x1, y1, x2, y2 = (float(v) * zoom for v in boxes[i])
    colour = PALETTE[int(classes[i]) % len(PALETTE)]
    canvas.rectangle([x1, y1, x2, y2], outline=colour, width=width)
    text = f'{class_names[i]} {float(scores[i]):.2f}'
    left, top, right, bottom = canvas.textbbox((0, 0), text, font=font)
    tw, th = right - left + 2 * width, bottom - top + 2 * width
    tx = min(max(x1, 0), max(picture.width - tw, 0))
    ty = y1 - th if y1 - th >= 0 else max(y1, 0)  # Above the box, or inside it at the top edge.
    canvas.rectangle([tx, ty, tx + tw, ty + th], fill=colour)
    ink = (0, 0, 0) if sum(c * w for c, w in zip(colour, (0.299, 0.587, 0.114))) > 140 else (255, 255, 255)
    canvas.text((tx + width - left, ty + width - top), text, fill=ink, font=font)
  return picture
