/**
 * The thread behind writeFileAtomicOffThread (atomic-file.ts): runs the
 * blocking atomic write, one request at a time, and posts back how it went.
 */
import { parentPort } from "node:worker_threads";
import { writeFileAtomicSync } from "./atomic-file.js";

export interface WriteRequest {
  id: number;
  file: string;
  body: string;
  mode: number;
}

export interface WriteAnswer {
  id: number;
  error?: { name: string; message: string; code?: string };
}

parentPort?.on("message", (request: WriteRequest) => {
  let answer: WriteAnswer = { id: request.id };
  try {
    writeFileAtomicSync(request.file, request.body, request.mode);
  } catch (err) {
    const { name, message, code } = err as NodeJS.ErrnoException;
    answer = { id: request.id, error: { name, message, ...(code ? { code } : {}) } };
  }
  parentPort?.postMessage(answer);
});
