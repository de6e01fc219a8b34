/* Point z-buffer splatting on the CPU: the native twin of the torch path in points.py (zbuffer_points).
 *
 * Built on first use by scene_kd/render/native.py (cc -O3 -shared, cached per source hash) and called through
 * ctypes, which releases the GIL, so the Python side runs one call per thread on its own slice of the points and
 * its own buffer, then merges the buffers with an elementwise min.
 *
 * Same conventions and the same float32 arithmetic as the torch reference:
 *   m = P @ (x, y, z, 1), z = m2, u = m0 * (1 / z), v = m1 * (1 / z)      (P = K [R | t], 3 x 4 row-major)
 *   key = float_bits(z) << 32 | id   (positive float32 bits order like the floats, so min key = nearest point)
 *   pixel (row, col) = (floor(v), floor(u)), flat index row * W + col; zbuf[i] = min(zbuf[i], key).
 * Footprints (mode):
 *   0  one pixel: the point's own pixel, when it is inside the image and z > near.
 *   1  fixed integer disc: pixels (col + dx, row + dy) with dx^2 + dy^2 <= fixed_r^2 + 1e-6.
 *   2  world radius: r = min(fx * radius / z, max_px) pixels; the own pixel always, and every other pixel whose
 *      centre (col + dx + 0.5, row + dy + 0.5) lies within r of (u, v).
 * Points with z <= near draw nothing. No allocation, no per-point state: memory is the caller's buffer.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

static inline int64_t pack_key(float z, int64_t id) {
    int32_t bits;
    memcpy(&bits, &z, sizeof bits);
    return ((int64_t)bits << 32) | id;
}

/* Mode 0, the hot path: branch-free projection into a small block of (pixel, key) pairs, then the min-stores
 * (a data-dependent branch per point costs more than the arithmetic; the block keeps the stores together). */
static void splat_single(const float *xyz, int64_t n, const float *P, int64_t W, int64_t H, int64_t id0,
                         float near, int64_t *zbuf) {
    const float fw = (float)W, fh = (float)H;
    const int32_t dump = (int32_t)(W * H), w32 = (int32_t)W;
    enum { BLOCK = 512 };
    int32_t pix[BLOCK], zbits[BLOCK];
    for (int64_t start = 0; start < n; start += BLOCK) {
        const int64_t m = n - start < BLOCK ? n - start : BLOCK;
        const float *p = xyz + 3 * start;
        for (int64_t j = 0; j < m; j++) {
            const float x = p[3 * j], y = p[3 * j + 1], z = p[3 * j + 2];
            const float zc = P[8] * x + P[9] * y + P[10] * z + P[11];
            const float inv = 1.0f / zc;
            const float u = (P[0] * x + P[1] * y + P[2] * z + P[3]) * inv;
            const float v = (P[4] * x + P[5] * y + P[6] * z + P[7]) * inv;
            const int inside = (zc > near) & (u >= 0.0f) & (u < fw) & (v >= 0.0f) & (v < fh);
            const int32_t flat = (int32_t)v * w32 + (int32_t)u;
            pix[j] = inside ? flat : dump;
            int32_t bits;
            memcpy(&bits, &zc, sizeof bits);
            zbits[j] = bits;
        }
        for (int64_t j = 0; j < m; j++) {
            int64_t *slot = zbuf + pix[j];
            const int64_t old = *slot, k = ((int64_t)zbits[j] << 32) | (id0 + start + j);
            *slot = k < old ? k : old;
        }
    }
}

/* Modes 1 and 2: a footprint per point. */
static void splat_footprint(const float *xyz, int64_t n, const float *P, int64_t W, int64_t H, int64_t id0,
                            float near, int mode, float fixed_r, const float *radii, float radius, float fx,
                            float max_px, int64_t *zbuf) {
    const float fixed_r2 = fixed_r * fixed_r + 1e-6f;
    const int fixed_R = (int)floorf(fixed_r);
    for (int64_t i = 0; i < n; i++) {
        const float *p = xyz + 3 * i;
        const float x = p[0], y = p[1], z = p[2];
        const float zc = P[8] * x + P[9] * y + P[10] * z + P[11];
        if (!(zc > near)) continue;
        const float inv = 1.0f / zc;
        const float u = (P[0] * x + P[1] * y + P[2] * z + P[3]) * inv;
        const float v = (P[4] * x + P[5] * y + P[6] * z + P[7]) * inv;
        const float uc = fminf(fmaxf(u, -1e6f), 1e6f), vc = fminf(fmaxf(v, -1e6f), 1e6f);
        const float colf = floorf(uc), rowf = floorf(vc);
        const int64_t col = (int64_t)colf, row = (int64_t)rowf;
        const int64_t k = pack_key(zc, id0 + i);
        float r = 0.0f, r2 = 0.0f, fu = 0.0f, fv = 0.0f;
        int R;
        if (mode == 1) {
            R = fixed_R;
        } else {
            const float rad = radii ? radii[i] : radius;
            r = fx * rad / zc;
            r = r < 0.0f ? 0.0f : (r > max_px ? max_px : r);
            r2 = r * r;
            R = (int)floorf(r + 0.5f);
            fu = u - colf;
            fv = v - rowf;
        }
        for (int dy = -R; dy <= R; dy++) {
            const int64_t rr = row + dy;
            if (rr < 0 || rr >= H) continue;
            for (int dx = -R; dx <= R; dx++) {
                const int64_t cc = col + dx;
                if (cc < 0 || cc >= W) continue;
                if (dx || dy) {
                    if (mode == 1) {
                        if ((float)(dx * dx + dy * dy) > fixed_r2) continue;
                    } else {
                        const float ex = (float)dx + 0.5f - fu, ey = (float)dy + 0.5f - fv;
                        if (ex * ex + ey * ey > r2) continue;
                    }
                }
                int64_t *slot = zbuf + rr * W + cc;
                if (k < *slot) *slot = k;
            }
        }
    }
}

/* Entry point. zbuf: W * H + 1 int64 slots (mode 0 uses the last as a dump). radii: [n] or NULL. */
void scene_kd_zbuffer_splat(const float *xyz, int64_t n, const float *P, int64_t W, int64_t H, int64_t id0,
                            float near, int mode, float fixed_r, const float *radii, float radius, float fx,
                            float max_px, int64_t *zbuf) {
    if (mode == 0)
        splat_single(xyz, n, P, W, H, id0, near, zbuf);
    else
        splat_footprint(xyz, n, P, W, H, id0, near, mode, fixed_r, radii, radius, fx, max_px, zbuf);
}

/* Interface version, checked by the loader. */
int scene_kd_zbuffer_version(void) { return 1; }

/* buf[0:n] = value (each thread fills its own buffer: no torch parallel region next to ours). */
void scene_kd_fill_i64(int64_t *buf, int64_t n, int64_t value) {
    for (int64_t i = 0; i < n; i++) buf[i] = value;
}

/* dst[i] = min(dst[i], src[i]) for i in [0, n): merging per-thread buffers, a disjoint range per thread. */
void scene_kd_min_into_i64(int64_t *dst, const int64_t *src, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = src[i] < dst[i] ? src[i] : dst[i];
}
