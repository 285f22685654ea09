import { render } from 'preact';
import { App } from './app';
import { Client } from './client';

const root = document.getElementById('app');
if (root !== null) render(<App client={new Client()} />, root);
