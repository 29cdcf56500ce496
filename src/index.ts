/** What plugin authors import: `import { definePlugin, deny } from 'prequeue'`. */
export * from './plugin/api';
export * from './plugin/decision';
export type { Message, MessageHeaders, HeaderField, BodyPart, BodyRange } from './message/types';
export type { Address, ClientInfo, ConnectionState, TransactionState } from './session/state';
export type { ResultInput, PluginResult } from './session/results';
