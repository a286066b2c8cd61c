/* The Benchmarks Game mandelbrot, plain C: the reference that
 * mcmandelbrot.bitmap's output is checked against (same bytes) and timed
 * beside. One scalar loop per pixel; rows are shared among threads when
 * built with -fopenmp, then written in order. Usage: bitmap N > out.pbm */
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    int w, h, iter = 50;
    double limit = 2.0;
    long rowBytes;
    unsigned char *bitmap;

    w = h = argc > 1 ? atoi(argv[1]) : 200;
    rowBytes = (w + 7) / 8;
    bitmap = calloc((size_t)rowBytes * h, 1);
    if (!bitmap)
        return 1;
#pragma omp parallel for schedule(dynamic, 8)
    for (int y = 0; y < h; ++y) {
        unsigned char *row = bitmap + (size_t)rowBytes * y;
        int bit_num = 0;
        unsigned char byte_acc = 0;
        for (int x = 0; x < w; ++x) {
            double Zr = 0.0, Zi = 0.0, Tr = 0.0, Ti = 0.0;
            double Cr = (2.0 * x / w - 1.5), Ci = (2.0 * y / h - 1.0);
            for (int i = 0; i < iter && (Tr + Ti <= limit * limit); ++i) {
                Zi = 2.0 * Zr * Zi + Ci;
                Zr = Tr - Ti + Cr;
                Tr = Zr * Zr;
                Ti = Zi * Zi;
            }
            byte_acc <<= 1;
            if (Tr + Ti <= limit * limit)
                byte_acc |= 0x01;
            ++bit_num;
            if (bit_num == 8) {
                *row++ = byte_acc;
                byte_acc = 0;
                bit_num = 0;
            } else if (x == w - 1) {
                byte_acc <<= (8 - w % 8);
                *row++ = byte_acc;
                byte_acc = 0;
                bit_num = 0;
            }
        }
    }
    printf("P4\n%d %d\n", w, h);
    fwrite(bitmap, 1, (size_t)rowBytes * h, stdout);
    free(bitmap);
    return 0;
}
