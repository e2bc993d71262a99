import react from '@vitejs/plugin-react';
import { defineConfig } from 'vitest/config';

// `npm run dev` serves the client with hot reload and forwards the API (every path under
// /posts, including the live stream) to a running stack's gateway, so the browser sees one
// origin exactly as it does behind the Ingress.
const api = process.env.MICROBLOG_URL ?? 'http://127.0.0.1:8080';

export default defineConfig({
  plugins: [react()],
  build: {
    outDir: 'dist',
    // Modern browsers only; no polyfills, no CDN: everything ships from dist/.
    target: 'es2022',
  },
  server: {
    port: 3000,
    proxy: { '/posts': { target: api, changeOrigin: true } },
  },
  preview: {
    port: 3000,
    proxy: { '/posts': { target: api, changeOrigin: true } },
  },
  test: {
    // Logic tests run in Node; component tests opt into jsdom with a @vitest-environment comment.
    environment: 'node',
    include: ['src/**/*.test.{ts,tsx}'],
    restoreMocks: true,
  },
});
