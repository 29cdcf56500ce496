import winston from 'winston';
import type { LogLevel, PluginLogger } from './plugin/api';

const RANK: Record<LogLevel, number> = { error: 0, warn: 1, info: 2, debug: 3 };

export interface Logger extends PluginLogger {
  readonly level: LogLevel;
  enabled(level: LogLevel): boolean;
  /** A logger that adds `meta` to every line; `level` narrows or widens it (per-plugin log levels). */
  child(meta: Record<string, unknown>, level?: LogLevel): Logger;
}

export interface LogConfig {
  level: LogLevel;
  format: 'text' | 'json';
  file?: string;
}

/** The level check and the per-level methods, shared by the winston logger and the in-memory one. */
abstract class LevelLogger implements Logger {
  constructor(
    readonly level: LogLevel,
    protected readonly meta: Record<string, unknown>,
  ) {}
  enabled(level: LogLevel): boolean {
    return RANK[level] <= RANK[this.level];
  }
  protected abstract write(level: LogLevel, msg: string, meta: Record<string, unknown>): void;
  abstract child(meta: Record<string, unknown>, level?: LogLevel): Logger;
  private log(level: LogLevel, msg: string, meta?: Record<string, unknown>): void {
    if (this.enabled(level)) this.write(level, msg, meta ? { ...this.meta, ...meta } : this.meta);
  }
  error(msg: string, meta?: Record<string, unknown>): void {
    this.log('error', msg, meta);
  }
  warn(msg: string, meta?: Record<string, unknown>): void {
    this.log('warn', msg, meta);
  }
  info(msg: string, meta?: Record<string, unknown>): void {
    this.log('info', msg, meta);
  }
  debug(msg: string, meta?: Record<string, unknown>): void {
    this.log('debug', msg, meta);
  }
}

/**
 * winston does the writing; the level check happens here, because per-plugin
 * levels can be more verbose than the global one and winston filters per
 * transport, not per child.
 */
class WinstonFacade extends LevelLogger {
  constructor(
    private readonly w: winston.Logger,
    level: LogLevel,
    meta: Record<string, unknown>,
  ) {
    super(level, meta);
  }
  protected write(level: LogLevel, msg: string, meta: Record<string, unknown>): void {
    this.w.log(level, msg, meta);
  }
  child(meta: Record<string, unknown>, level?: LogLevel): Logger {
    return new WinstonFacade(this.w, level ?? this.level, { ...this.meta, ...meta });
  }
}

function textLine(info: winston.Logform.TransformableInfo): string {
  const { level, message, timestamp, ...rest } = info as Record<string, unknown>;
  const fields = Object.entries(rest)
    .filter(([k, v]) => v !== undefined && typeof k === 'string')
    .map(([k, v]) => `${k}=${typeof v === 'string' && !/[\s"=]/.test(v) && v !== '' ? v : JSON.stringify(v)}`)
    .join(' ');
  return `${timestamp} ${level} ${message}${fields ? ' ' + fields : ''}`;
}

export function createLogger(cfg: LogConfig, base: Record<string, unknown> = {}): Logger {
  const format =
    cfg.format === 'json'
      ? winston.format.combine(winston.format.timestamp(), winston.format.json())
      : winston.format.combine(winston.format.timestamp(), winston.format.printf(textLine));
  const transports: winston.transport[] = cfg.file
    ? [new winston.transports.File({ filename: cfg.file })]
    : [new winston.transports.Console({ stderrLevels: ['error', 'warn', 'info', 'debug'] })];
  const w = winston.createLogger({ level: 'debug', format, transports });
  return new WinstonFacade(w, cfg.level, base);
}

/** For tests and `--check`: a logger that keeps lines in memory. */
export class MemoryLogger extends LevelLogger {
  readonly lines: { level: LogLevel; msg: string; meta: Record<string, unknown> }[];
  constructor(level: LogLevel = 'debug', meta: Record<string, unknown> = {}, lines?: MemoryLogger['lines']) {
    super(level, meta);
    this.lines = lines ?? [];
  }
  protected write(level: LogLevel, msg: string, meta: Record<string, unknown>): void {
    this.lines.push({ level, msg, meta });
  }
  child(meta: Record<string, unknown>, level?: LogLevel): Logger {
    return new MemoryLogger(level ?? this.level, { ...this.meta, ...meta }, this.lines);
  }
}
